"""The `wildvision` command: `scan` a folder into JSON Lines, `predict` a few photos, `info` about the model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from wildvision.classifier import Classifier
from wildvision.images import ImageLoadError
from wildvision.model_info import ModelFormatError
from wildvision.scan import TerminalProgress, scan_to_jsonl

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some photos failed, 2 usage or model error)."""
    args = _parser().parse_args(argv)
    try:
        classifier = Classifier(args.model, threads=getattr(args, "threads", None))
        return args.command(args, classifier)
    except (FileNotFoundError, NotADirectoryError, ModelFormatError) as error:
        print(f"wildvision: {error}", file=sys.stderr)
        return 2


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _scan(args: argparse.Namespace, classifier: Classifier) -> int:
    summary = scan_to_jsonl(
        args.folder, args.output, classifier, batch_size=args.batch_size, workers=args.workers,
        progress=TerminalProgress(),
    )
    print(f"{args.output}: {summary}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace, classifier: Classifier) -> int:
    failures = 0
    for path in args.images:
        try:
            prediction = classifier.predict(path)
        except ImageLoadError as error:
            failures += 1
            print(f"{path}: error: {error.reason}")
            continue
        if args.json:
            print(json.dumps({"path": str(path), **prediction.to_dict()}))
        else:
            scores = "  ".join(f"{label} {score:.3f}" for label, score in prediction.scores.items())
            print(f"{path}: {prediction.decision.upper():<6} {prediction.label}  ({scores})")
    return 1 if failures else 0


def _info(args: argparse.Namespace, classifier: Classifier) -> int:
    info = classifier.info
    if args.json:
        print(info.to_json())
        return 0
    metrics = info.metrics
    points = ", ".join(f"{label}: review >= {p.review:.3f}, block >= {p.block:.3f}" for label, p in info.operating_points.items())
    print(f"model      {info.full_name}  ({classifier.model_path})")
    print(f"labels     {', '.join(info.labels)}")
    print(f"input      {info.preprocessing.input_size}px, {info.preprocessing.resize}")
    print(f"decisions  {points}")
    if metrics:
        by_source = ", ".join(f"{name} {value['accuracy']}" for name, value in metrics.get("accuracy_by_source", {}).items())
        print(f"accuracy   {metrics.get('accuracy')} on {metrics.get('photos')} held-out photos ({by_source})")
    print(f"trained on {json.dumps(info.training.get('data', {}).get('by_split', {}))}")
    print(f"notes      {info.notes}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wildvision", description="Spot illegal wildlife products in listing photos.")
    parser.add_argument("--model", type=Path, help="a wildvision .onnx model (default: the shipped model)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    scan = commands.add_parser("scan", help="score every photo under a folder into a JSON Lines file (resumable)")
    scan.add_argument("folder", type=Path)
    scan.add_argument("-o", "--output", type=Path, required=True, help="JSON Lines file; an existing one is continued")
    scan.add_argument("--batch-size", type=int, default=16)
    scan.add_argument("--workers", type=int, default=2, help="threads decoding photos")
    scan.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    scan.set_defaults(command=_scan)

    predict = commands.add_parser("predict", help="score photos and print the results")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="one JSON object per photo")
    predict.set_defaults(command=_predict)

    info = commands.add_parser("info", help="what the model is: labels, thresholds, measured accuracy, notes")
    info.add_argument("--json", action="store_true", help="the model's full metadata")
    info.set_defaults(command=_info)
    return parser
