"""Measure an exported model on held-out photos, the way it ships: `python -m training.evaluate --model M.onnx`.

The photos are those of the model's own recorded split (`training.split`), so `val` here is exactly the photos that
training never saw; the data is checked against that record first. `--split all` needs no split: it scores every
photo of the data as it is now, which may be newly labelled photos the model never saw (`--audit` them before
training on them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from training.audit import rank_doubts, write_doubts_csv
from training.data import list_samples_like
from training.errors import run_command
from training.evaluation import SPLITS, evaluate
from training.metrics import format_report
from training.split import add_recorded_split_options, load_split
from wildvision.classifier import Classifier

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a wildvision .onnx model (default: the shipped model)")
    add_recorded_split_options(parser)
    parser.add_argument("--split", default="val", choices=SPLITS,
                        help="part to score: val or calib are held out; train and all (every photo of the data "
                             "now, no split) are for --audit, not accuracy")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument("--report", type=Path, help="also write a self-contained HTML report here (needs matplotlib)")
    parser.add_argument("--audit", type=Path, help="also write every scored photo here as CSV, the most doubted label first")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
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
