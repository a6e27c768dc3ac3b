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
from wildvision.records import format_of
from wildvision.scan import TerminalProgress, files_from_list, find_images, scan_to_file

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some photos failed, 2 usage or model error)."""
    args = _parser().parse_args(argv)
    try:
        classifier = Classifier(args.model, precision=args.precision, threads=getattr(args, "threads", None))
        return args.command(args, classifier)
    except (FileNotFoundError, NotADirectoryError, ModelFormatError, ImportError, ValueError) as error:
        print(f"wildvision: {error}", file=sys.stderr)
        return 2


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _scan(args: argparse.Namespace, classifier: Classifier) -> int:
    format_of(args.output)  # an unknown format fails now, not after hours of scanning
    if (args.folder is None) == (args.files_from is None):
        raise ValueError("give either a FOLDER or --files-from LIST (- for stdin)")
    progress = TerminalProgress()
    if args.files_from is None:
        inputs = find_images(args.folder)
    elif str(args.files_from) == "-":
        inputs = files_from_list(sys.stdin)
    else:
        inputs = files_from_list(args.files_from.open(encoding="utf-8"))
    summary = scan_to_file(
        inputs, args.output, classifier, batch_size=args.batch_size, workers=args.workers, progress=progress,
    )
    progress.finish()
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
    parser.add_argument("--precision", choices=("float32", "int8"), default="float32",
                        help="which shipped model: int8 is smaller and faster at a small, measured accuracy cost")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    scan = commands.add_parser("scan", help="score every photo under a folder (or in a list) into a file; resumable")
    scan.add_argument("folder", type=Path, nargs="?", help="scanned recursively for image files")
    scan.add_argument("--files-from", type=Path, metavar="LIST", help="a file of photo paths, one a line; - for stdin")
    scan.add_argument("-o", "--output", type=Path, required=True,
                      help=".jsonl, .csv or .parquet; re-running the same command continues an interrupted scan")
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
