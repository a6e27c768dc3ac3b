"""Measure an exported model on held-out photos, the way it ships: `python -m training.evaluate --model M.onnx --data D`.

Photos go through the wildvision library (loading, preprocessing, onnxruntime, calibration, decisions), so the
figures describe what a platform gets. The split is rebuilt from the model's own training settings, so `val` here is
exactly the photos that training never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.audit import rank_doubts, write_doubts_csv
from training.data import Sample, prepare_samples_like
from training.metrics import format_report, measure
from wildvision.classifier import Classifier
from wildvision.images import ImageLoadError, load_image
from wildvision.preprocess import to_tensor

__all__ = ["Evaluation", "evaluate", "main"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a wildvision .onnx model (default: the shipped model)")
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="where the model's training data lies now (default: where its config recorded it); "
                             "repeat for each of its sources, in order")
    parser.add_argument("--split", default="val", choices=("val", "calib", "train", "all"),
                        help="part to score: val or calib are held out; train and all are for --audit, not accuracy")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument("--report", type=Path, help="also write a self-contained HTML report here (needs matplotlib)")
    parser.add_argument("--audit", type=Path, help="also write every scored photo here as CSV, the most doubted label first")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    classifier = Classifier(args.model)
    try:
        evaluation = evaluate(classifier, args.data, split=args.split)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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


@dataclass(frozen=True)
class Evaluation:
    """A model's raw outputs on held-out photos, and the metrics computed from them."""

    samples: list[Sample]  # the photos that could be scored, in order
    logits: np.ndarray  # uncalibrated, one row per sample
    probabilities: np.ndarray  # calibrated with the model's temperature
    metrics: dict[str, object]
    unreadable: list[str]  # one message per photo that could not be read


def evaluate(classifier: Classifier, data: Path | Sequence[Path] = (), *, split: str = "val") -> Evaluation:
    """Score one split (or `all`) of the model's training data, found at `data` where given, else where the model
    records it; photos that cannot be read are counted and named, not scored."""
    config = classifier.info.training.get("config", {})
    samples, _ = prepare_samples_like(config, data)
    held_out = [s for s in samples if split in (s.split, "all")]
    if not held_out:
        raise SystemExit(f"no {split} photos in {data or config.get('data')}")
    labels = list(classifier.info.labels)
    unknown = {s.label for s in held_out} - set(labels)
    if unknown:
        raise SystemExit(f"{data} has labels the model does not know: {sorted(unknown)}")
    logits, scored, unreadable = [], [], []
    spec = classifier.info.preprocessing
    for sample in held_out:
        try:
            pixels = to_tensor(load_image(sample.path, min_side=spec.input_size), spec)
        except ImageLoadError as error:
            unreadable.append(str(error))
            continue
        logits.append(classifier.logits(pixels[np.newaxis])[0])
        scored.append(sample)
    if unreadable:
        print(f"{len(unreadable)} unreadable photo(s) left out, e.g. {unreadable[0]}", file=sys.stderr)
    raw = np.array(logits)
    probabilities = classifier.probabilities(raw)
    metrics = measure(probabilities, scored, labels, classifier.info.operating_points)
    return Evaluation(scored, raw, probabilities, {**metrics, "unreadable": len(unreadable)}, unreadable)


if __name__ == "__main__":
    sys.exit(main())
