"""The `wildvision` command: `scan` a folder into JSON Lines, `predict` a few photos, `info` about the model, `index add`
known items, `serve` over HTTP, and `spark`: score an archive on Apache Spark."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from wildvision.classifier import Classifier
from wildvision.images import ImageLoadError, load_image
from wildvision.known_items import KnownItemIndex
from wildvision.model_info import ModelFormatError
from wildvision.records import format_of
from wildvision.scan import ScanInput, TerminalProgress, files_from_list, find_images, scan_to_file

__all__ = ["main", "run"]

_ADD_CHUNK = 64  # photos embedded and written per transaction by `index add`


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some photos failed, 2 usage or model error)."""
    args = _parser().parse_args(argv)
    try:
        classifier = Classifier(args.model, precision=args.precision, threads=getattr(args, "threads", None))
        return args.command(args, classifier)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ModelFormatError, ImportError, ValueError) as error:
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
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    summary = scan_to_file(
        inputs, args.output, classifier, batch_size=args.batch_size, workers=args.workers,
        scorers=max(1, (os.cpu_count() or 1) // args.threads), progress=progress, index=index,
    )
    progress.finish()
    print(f"{args.output}: {summary}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    overlays = _overlay_paths(args.images, args.explain) if args.explain else {}
    failures = 0
    for path in args.images:
        try:
            prediction, match = index.predict_and_match(path) if index else (classifier.predict(path), None)
            if args.explain:
                classifier.explain(path).overlay().save(overlays[path])
        except ImageLoadError as error:
            failures += 1
            print(f"{path}: error: {error.reason}")
            continue
        extra = {"match": match.to_dict() if match else None} if index else {}
        extra |= {"explanation": str(overlays[path])} if args.explain else {}
        if args.json:
            print(json.dumps({"path": str(path), **prediction.to_dict(), **extra}))
        else:
            scores = "  ".join(f"{label} {score:.3f}" for label, score in prediction.scores.items())
            notes = "".join(f"  {name}: {value}" for name, value in extra.items())
            print(f"{path}: {prediction.decision.upper():<6} {prediction.label}  ({scores}){notes}")
    return 1 if failures else 0


def _overlay_paths(images: list[Path], folder: Path) -> dict[Path, Path]:
    """Where each photo's heat-map overlay goes: FOLDER/<photo name>.explain.png, refusing names that would collide."""
    overlays = {image: folder / f"{image.name}.explain.png" for image in images}
    if len(set(overlays.values())) < len(set(overlays)):
        raise ValueError(f"two photos share a file name, so their overlays in {folder} would overwrite each other; "
                         "explain them in separate runs")
    folder.mkdir(parents=True, exist_ok=True)
    return overlays


def _index_add(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.index, classifier, create=True)
    side = classifier.info.preprocessing.input_size
    added = failures = 0
    photos, references = [], []
    for item in _photos_in(args.photos):
        try:
            photos.append(load_image(item.file, min_side=side))
            references.append(item.name)
        except ImageLoadError as error:
            failures += 1
            print(f"{item.name}: error: {error.reason}", file=sys.stderr)
        if len(photos) == _ADD_CHUNK:
            index.add(photos, references)
            added += len(photos)
            photos, references = [], []
    if photos:
        index.add(photos, references)
        added += len(photos)
    print(f"{args.index}: added {added} photos, {failures} failed; {len(index)} known items", file=sys.stderr)
    return 1 if failures else 0


def _photos_in(paths: list[Path]) -> Iterator[ScanInput]:
    """Each path itself, or the image files under it when it is a folder; referenced by path as given."""
    for path in paths:
        if path.is_dir():
            yield from (ScanInput(item.file, item.file.as_posix()) for item in find_images(path))
        else:
            yield ScanInput(path, path.as_posix())


def _serve(args: argparse.Namespace, classifier: Classifier) -> int:
    try:
        import uvicorn

        from wildvision.service import DEFAULT_MAX_BYTES, create_app
    except ImportError as error:
        raise ImportError(f"`wildvision serve` needs the serve extra ({error.name} is missing): "
                          "pip install 'wildvision[serve]'") from None
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    app = create_app(classifier, index=index, max_bytes=args.max_bytes or DEFAULT_MAX_BYTES)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _spark(args: argparse.Namespace, classifier: Classifier) -> int:
    from wildvision.spark import score_archive, session  # pyspark is imported by this command only

    summary = score_archive(session(args.master), args.source, args.output, model=classifier.model_path,
                            batch_size=args.batch_size, partitions=args.partitions)
    print(f"{args.output}: {summary}", file=sys.stderr)
    return 0


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
        for name, rates in metrics.get("decisions_by_dataset", {}).items():  # the open world, per data source
            parts = [f"{rates[f'{kind}_flagged']:.2%} of {rates[kind]} {kind} photos"
                     for kind in ("harmless", "prohibited") if rates[kind]]
            print(f"flagged    {name}: {', '.join(parts)} (sent to review or blocked)")
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
    scan.add_argument("--batch-size", type=_positive_int, default=16)
    scan.add_argument("--workers", type=_positive_int, default=2, help="threads decoding photos")
    scan.add_argument("--threads", type=_positive_int, default=1,
                      help="onnxruntime threads per batch; one batch is scored per THREADS cores at once (default: 1)")
    scan.add_argument("--match-index", type=Path, metavar="INDEX",
                      help="a known-item index (see `index add`): every record gets a `match` field")
    scan.set_defaults(command=_scan)

    predict = commands.add_parser("predict", help="score photos and print the results")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="one JSON object per photo")
    predict.add_argument("--explain", type=Path, metavar="DIR",
                         help="write a heat-map overlay per photo to DIR/<photo name>.explain.png for a reviewer")
    predict.add_argument("--match-index", type=Path, metavar="INDEX", help="also say which known item each photo re-posts")
    predict.set_defaults(command=_predict)

    index = commands.add_parser("index", help="the known-item index: photos already confirmed as illegal")
    index_commands = index.add_subparsers(required=True, metavar="ACTION")
    add = index_commands.add_parser("add", help="add photos (files or folders) to an index, creating it if absent")
    add.add_argument("index", type=Path, help="the index file (SQLite), e.g. known-items.sqlite")
    add.add_argument("photos", nargs="+", type=Path, help="photo files, or folders scanned recursively; the path is "
                     "the item's reference, and adding a path again replaces its item")
    add.set_defaults(command=_index_add)

    serve = commands.add_parser("serve", help="an HTTP service: POST a photo to /predict (needs wildvision[serve])")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--match-index", type=Path, metavar="INDEX", help="add the known-item match to every answer")
    serve.add_argument("--max-bytes", type=int, help="largest accepted upload in bytes (default 20 MiB)")
    serve.add_argument("--threads", type=_positive_int, help="onnxruntime threads (default: all cores)")
    serve.set_defaults(command=_serve)

    spark = commands.add_parser("spark", help="score an archive on Apache Spark into a Parquet folder "
                                "(needs wildvision[spark])")
    spark.add_argument("source", help="a folder (searched recursively) or glob: a local path, file://, hdfs://, s3a://")
    spark.add_argument("-o", "--output", required=True, help="the Parquet folder to create, on any file system Spark "
                       "writes to; same columns as `scan -o x.parquet`")
    spark.add_argument("--master", help="e.g. local[4] (default: spark-submit's, else local[*])")
    spark.add_argument("--partitions", type=_positive_int, help="about how many tasks score the archive, each writing one "
                       "Parquet file (default: Spark's split, about 30 photos per task)")
    spark.add_argument("--batch-size", type=_positive_int, default=16)
    spark.set_defaults(command=_spark)

    info = commands.add_parser("info", help="what the model is: labels, thresholds, measured accuracy, notes")
    info.add_argument("--json", action="store_true", help="the model's full metadata")
    info.set_defaults(command=_info)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type: a count of threads, photos or tasks, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
