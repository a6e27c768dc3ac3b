"""Measure an exported model on held-out photos, the way it ships: `python -m training.evaluate --model M.onnx`.

The photos are those of the model's own recorded split (`training.split`), so `val` here is exactly the photos that
training never saw; the data is checked against that record first. `--split all` needs no split: it scores every
photo of the data as it is now, which may be newly labelled photos the model never saw (`--audit` them before
training on them).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training.audit import rank_doubts, write_doubts_csv
from training.data import list_samples_like
from training.errors import run_command
from training.evaluation import SPLITS, evaluate
from training.metrics import format_report
from training.options import check_ranges, option, parse
from training.split import load_split, recorded_data_option, split_file_option
from wildvision.classifier import Classifier

__all__ = ["main"]


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate, on which photos, and what to write."""

    model: Path | None = option(None, "a wildvision .onnx model (default: the shipped model)", changes_weights=False)
    data: tuple[Path, ...] = recorded_data_option()
    split_file: Path | None = split_file_option()
    split: str = option("val", "part to score: val or calib are held out; train and all (every photo of the data now, "
                               "no split) are for --audit, not accuracy", changes_weights=False, choices=SPLITS)
    json: Path | None = option(None, "also write the metrics here", changes_weights=False)
    report: Path | None = option(None, "also write a self-contained HTML report here (needs matplotlib)",
                                 changes_weights=False)
    audit: Path | None = option(None, "also write every scored photo here as CSV, the most doubted label first",
                                changes_weights=False)

    def __post_init__(self) -> None:
        check_ranges(self)


def parse_args(argv: Sequence[str] | None) -> EvaluateConfig:
    return parse(EvaluateConfig, argv, prog="python -m training.evaluate", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: _evaluate(parse_args(argv)))


def _evaluate(args: EvaluateConfig) -> int:
    classifier = Classifier(args.model)
    training = classifier.info.training
    samples = (list_samples_like(training["config"], args.data) if args.split == "all"
               else load_split(training, data=args.data, split_file=args.split_file))
    evaluation = evaluate(classifier, samples, split=args.split)
    sources = ", ".join(sorted({s.dataset for s in evaluation.samples}))
    print(f"{classifier.info.full_name} on the {args.split} split of {sources}")
    if args.split in ("train", "all"):
        print("not held out: these figures include photos the model may have trained on; use them for --audit only")
    print(format_report(evaluation.metrics))
    if args.json:
        args.json.write_text(json.dumps(evaluation.metrics, indent=2))
    if args.report:
        # Imported only when asked for: measuring a model needs no plotting library.
        from training.report import write_report

        write_report(evaluation, classifier.info, args.report)
        print(f"report written to {args.report}")
    if args.audit:
        write_doubts_csv(rank_doubts(evaluation, classifier.info.labels), args.audit)
        print(f"label audit written to {args.audit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
