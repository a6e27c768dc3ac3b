"""The `wildvision` command: `scan` a folder into JSON Lines, `predict` a few photos, `info` about the model, `index add`
known items, `serve` over HTTP, and `spark`: score an archive on Apache Spark."""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import logging
import math
import os
import signal
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

from wildvision.classifier import Classifier, Prediction, twin_path
from wildvision.errors import WildvisionError
from wildvision.images import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageLoadError,
    load_frames,
    load_image,
)
from wildvision.decision import DECISION_RANK, MatchPolicy
from wildvision.hashing import pdq_available
from wildvision.known_items import KnownItemIndex, export_hash_list, import_hash_list, utc_time
from wildvision.scorer import Scorer
from wildvision.model_info import read_operating_points
from wildvision.listings import (
    Listings,
    listings_from_csv,
    listings_path,
    summarise_listings,
    write_listings,
)
from wildvision.records import format_of, read_records
from wildvision.scan import (
    ScanInput,
    TerminalProgress,
    files_from_list,
    find_images,
    scan_to_file,
)
from wildvision.settings import ClassifierSettings
from wildvision.text import Lexicon

__all__ = ["EXIT_STATUSES", "main", "run"]

_ADD_CHUNK = 64  # photos embedded and written per transaction by `index add`
_API_KEYS_VARIABLE = "WILDVISION_API_KEYS"  # `serve`: bearer tokens, comma-separated
_BROKEN_PIPE = 141  # the status of a command that SIGPIPE ends (128 + 13), as `head` leaves `cat`
# What every command's exit status means; `wildvision --help` prints it and docs/cli.md's table states it per command.
EXIT_STATUSES = {
    0: "every photo was scored (scan, spark, predict, index add, index reembed), a hash list was imported or "
       "exported, the service stopped cleanly, or info printed",
    1: "some photos could not be scored: each has its record or line with the error (scan, spark, predict, "
       "index add, index reembed: also a photo naming no item; index remove: a reference naming none; index export: "
       "no item has a PDQ hash, so the list is empty)",
    2: "a usage, input or model error, said in one line: an unknown option, a missing folder, a folder with no "
       "image file, a list with no readable path, a bad model or thresholds file, a bad hash-list row",
    _BROKEN_PIPE: "the reader of stdout closed it (`wildvision info | head`): stopped quietly",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (`EXIT_STATUSES`)."""
    args = _parse(argv)
    try:
        points = read_operating_points(args.operating_points) if args.operating_points else None
        # The one settings type that Spark's executors and the service's classifier are loaded with too.
        settings = ClassifierSettings.with_points(
            points, max_pixels=args.max_pixels, max_frames=args.max_frames, threads=getattr(args, "threads", None),
            read_text=args.read_text, lexicon=Lexicon.load(args.lexicon) if args.lexicon is not None else None)
        classifier = settings.load(args.model, precision=args.precision)
        status = args.command(args, classifier)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit, where it prints a traceback
        return status
    # Bad input, files or extras become one line; anything else is a bug and keeps its traceback.
    except (WildvisionError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError) as error:
        print(f"wildvision: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `wildvision info | head -5`: the reader has what it wanted, so stop without a word
        _discard_stdout()
        return _BROKEN_PIPE


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options; an unknown one is refused under the usage of the command it was given to, with the closest
    option that command has (argparse alone names the top-level usage)."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command: argparse.ArgumentParser = getattr(args, "parser", parser)
        known = [option for action in command._actions for option in action.option_strings]
        guesses = difflib.get_close_matches(unknown[0].split("=")[0], known, n=1)
        hint = f" (did you mean {guesses[0]}?)" if guesses else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit meets no closed pipe either."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout with no file descriptor (a test's capture)
        pass


def _scan(args: argparse.Namespace, classifier: Classifier) -> int:
    format_of(args.output)  # an unknown format fails now, not after hours of scanning
    if (args.folder is None) == (args.files_from is None):
        raise _UsageError("give either a FOLDER or --files-from LIST (- for stdin)")
    progress = TerminalProgress()
    skipped: Counter = Counter()
    if args.files_from is None:
        inputs = find_images(args.folder, skipped=skipped)
        source = f"no image files under {args.folder} (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        if progress.enabled:  # a second walk of the folder, for a total and an ETA on a person's terminal only
            progress.total = sum(1 for _ in find_images(args.folder))
    elif str(args.files_from) == "-":
        inputs, source = files_from_list(sys.stdin), "the list on stdin holds no paths"
    else:
        inputs, source = files_from_list(args.files_from.open(encoding="utf-8")), f"{args.files_from} holds no paths"
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    policy = _match_policy(args)
    listings = _listings(args)  # a bad listings file fails now, before any photo is scored
    first = next(inputs, None)
    if first is None:  # nothing to scan is a mistake (a wrong folder, an empty list), not a success
        raise _NothingToScan(f"{source}; nothing scanned, {args.output} left as it was")
    urls: Counter = Counter()
    summary = scan_to_file(
        _noting_urls(itertools.chain([first], inputs), urls), args.output, classifier, batch_size=args.batch_size,
        workers=args.workers, scorers=max(1, (os.cpu_count() or 1) // args.threads), progress=progress, index=index,
        match_policy=policy,
    )
    progress.finish()
    summary.skipped = skipped
    print(f"{args.output}: {summary}", file=sys.stderr)
    if urls:
        print(f"wildvision: {urls['url']} listed paths are URLs, which scan does not fetch: download the photos "
              "first, or read them with `wildvision spark` (hdfs://, s3a://, file://)", file=sys.stderr)
    if listings is not None:
        decided = summarise_listings(read_records(args.output), listings, classifier.info.operating_points,
                                     classifier.lexicon, policy)
        write_listings(decided, listings_path(args.output))
        decisions = Counter(str(listing.decision) for listing in decided)
        print(f"{listings_path(args.output)}: {len(decided)} listings; decisions: "
              f"{', '.join(f'{name} {count}' for name, count in sorted(decisions.items()))}", file=sys.stderr)
    if summary.failed and not summary.scored and set(summary.failures) == {"unreadable"} and args.files_from:
        print(f"wildvision: none of the {summary.failed} listed paths could be read; nothing was scored",
              file=sys.stderr)
        return 2
    return 1 if summary.failed else 0


def _noting_urls(inputs: Iterator[ScanInput], urls: Counter) -> Iterator[ScanInput]:
    """`inputs` unchanged, counting in `urls` the names that are URLs (a list of links, not of files)."""
    for item in inputs:
        if "://" in item.name:
            urls["url"] += 1
        yield item


def _listings(args: argparse.Namespace) -> Listings | None:
    if args.listings is not None and args.listing_folders:
        raise _UsageError("give either --listings CSV or --listing-folders, not both")
    if args.listing_folders and args.folder is None:
        raise _UsageError("--listing-folders needs a FOLDER to scan (its sub-folders are the listings)")
    if args.listings is not None:
        return listings_from_csv(args.listings)
    return Listings() if args.listing_folders else None


def _predict(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    scorer = Scorer(classifier, index=index, policy=_match_policy(args))
    overlays = _overlay_paths(args.images, args.explain) if args.explain else {}
    failures = 0
    for path in args.images:
        try:
            prediction, match = scorer.predict(path)
            if args.explain:  # at the photo's own size: the scored copy of a large JPEG is a quarter as wide
                explanation = classifier.explain(path)
                photo = load_frames(path, max_pixels=classifier.max_pixels, max_frames=classifier.max_frames)
                explanation.overlay(photo[explanation.frame]).save(overlays[path])
        except ImageLoadError as error:
            failures += 1
            print(f"{path}: error: {error.reason}")
            continue
        extra = {"match": match.to_dict() if match else None} if index else {}
        extra |= {"explanation": str(overlays[path])} if args.explain else {}
        if args.json:
            print(json.dumps({"path": str(path), **prediction.to_dict(), **extra}, ensure_ascii=False))
        else:
            scores = "  ".join(f"{label} {score:.3f}" for label, score in prediction.scores.items())
            notes = "".join(f"  {name}: {value}" for name, value in extra.items())
            about = prediction.label or f"(top: {prediction.top_label})"  # an allowed photo is flagged for nothing
            print(f"{path}: {prediction.decision.upper():<6} {about}  ({scores}){notes}{_words(prediction)}")
    return 1 if failures else 0


def _words(prediction: Prediction) -> str:
    """What the text on the photo named, for a person: `  text: ivory ("mammoth ivory" in "Mammoth Ivory Netsuke")`."""
    if prediction.text is None:
        return ""
    named = "; ".join(f'{match.label} ("{match.phrase}" in "{match.text}")' for match in prediction.text.matches)
    return f"  text: {named or f'nothing named ({len(prediction.text.lines)} lines read)'}"


def _overlay_paths(images: list[Path], folder: Path) -> dict[Path, Path]:
    """Where each photo's heat-map overlay goes: FOLDER/<photo name>.explain.png, refusing names that would collide."""
    overlays = {image: folder / f"{image.name}.explain.png" for image in images}
    if len(set(overlays.values())) < len(set(overlays)):
        raise _UsageError(f"two photos share a file name, so their overlays in {folder} would overwrite each other; "
                         "explain them in separate runs")
    folder.mkdir(parents=True, exist_ok=True)
    return overlays


def _match_policy(args: argparse.Namespace) -> MatchPolicy:
    """What a known-item match decides (`--strict-match`, `--loose-match`); the policy's own defaults where left out."""
    given = {name: getattr(args, f"{name}_match") for name in ("strict", "loose")
             if getattr(args, f"{name}_match") is not None}
    if given and not args.match_index:
        raise _UsageError("--strict-match and --loose-match say what a known-item match decides: they need --match-index")
    return MatchPolicy(**given)


def _index_list(args: argparse.Namespace, classifier: Classifier) -> int:
    for item in KnownItemIndex(args.index, classifier).items():
        print(json.dumps(item.to_dict(), ensure_ascii=False) if args.json
              else "\t".join(str(value) if value is not None else "-" for value in (
                  item.id, item.reference, item.added_at, item.label, item.source, item.expires_at, item.signals)))
    return 0


def _index_remove(args: argparse.Namespace, classifier: Classifier) -> int:
    if not args.references and not args.expired:
        raise _UsageError("name the REFERENCEs to remove, or give --expired")
    index = KnownItemIndex(args.index, classifier)
    absent = index.remove(args.references)
    removed = len(args.references) - len(absent) + (index.remove_expired() if args.expired else 0)
    for reference in absent:
        print(f"{reference}: error: no such item in {args.index}", file=sys.stderr)
    print(f"{args.index}: removed {removed} items; {len(index)} known items", file=sys.stderr)
    return 1 if absent else 0


def _index_stats(args: argparse.Namespace, classifier: Classifier) -> int:
    stats = KnownItemIndex(args.index, classifier).stats()
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False))
    else:
        print(f"{args.index}: {stats.items} known items ({stats.expired} expired; {stats.with_pdq} with PDQ hashes "
              f"({stats.pdq_hashes} in all), {stats.pdq_only} of them PDQ only; {stats.embedded} embedded by this "
              "model), added "
              f"{stats.oldest or '-'} to {stats.newest or '-'}, {stats.file_bytes:,} bytes, created with "
              f"{stats.built_with}")
    return 0


def _index_add(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.index, classifier, create=True)
    if args.source:
        index.set_source(args.source)
    expires_at = _expiry(args)

    def add(photos: list, references: list[str]) -> int:
        index.add(photos, references, label=args.label, expires_at=expires_at)
        return len(photos)

    added, failures = _in_chunks(args.photos, classifier, add)
    if not added and not failures:
        raise _NothingToScan(f"no image files in {', '.join(map(str, args.photos))}; {args.index} left as it was")
    print(f"{args.index}: added {added} photos, {failures} failed; {len(index)} known items", file=sys.stderr)
    return 1 if failures else 0


def _index_reembed(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.index, classifier)
    reports = []

    def reembed(photos: list, references: list[str]) -> int:
        reports.append(index.reembed(photos, references))
        return reports[-1].reembedded

    reembedded, failures = _in_chunks(args.photos, classifier, reembed)
    absent = [reference for report in reports for reference in report.absent]
    for reference in absent:
        print(f"{reference}: error: no such item in {args.index} (photos are matched to items by reference, the "
              "path as `index add` was given it)", file=sys.stderr)
    stats = index.stats()
    other = stats.items - stats.pdq_only - stats.embedded  # photo items without this model's embedding
    print(f"{args.index}: re-embedded {reembedded} items with {index.model}, {failures} photos failed; {other} items "
          "still carry another model's embedding or none", file=sys.stderr)
    return 1 if failures or absent else 0


def _in_chunks(
    paths: list[Path], classifier: Classifier, write: Callable[[list, list[str]], int]
) -> tuple[int, int]:
    """Read the photos under `paths` (referenced as `_photos_in` names them) and hand them to `write` a chunk at a
    time; an unreadable photo is named on stderr. Returns what `write` counted, and the photos that failed."""
    side = classifier.info.preprocessing.input_size
    done = failures = 0
    photos, references = [], []
    for item in _photos_in(paths):
        try:
            photos.append(load_image(item.file, min_side=side))
            references.append(item.name)
        except ImageLoadError as error:
            failures += 1
            print(f"{item.name}: error: {error.reason}", file=sys.stderr)
        if len(photos) == _ADD_CHUNK:
            done += write(photos, references)
            photos, references = [], []
    if photos:
        done += write(photos, references)
    return done, failures


def _index_export(args: argparse.Namespace, classifier: Classifier) -> int:
    exported = export_hash_list(KnownItemIndex(args.index, classifier), args.file, source=args.source)
    print(f"{args.file}: exported {exported.rows} PDQ hashes of {exported.items} items", file=sys.stderr)
    if not exported.without_pdq:
        return 0
    # Items added without pdqhash have no PDQ hash: the list is short of them (empty, if none has one).
    remedy = "" if pdq_available() else "pip install 'wildvision[pdq]', then "
    print(f"{args.file}: {exported.without_pdq} items have no PDQ hash and are not in the list: {remedy}"
          "`wildvision index reembed` their photos", file=sys.stderr)
    return 0 if exported.items else 1


def _index_import(args: argparse.Namespace, classifier: Classifier) -> int:
    index = KnownItemIndex(args.index, classifier, create=True)
    imported = import_hash_list(index, args.file, source=args.source, expires_at=_expiry(args))
    skipped = "".join(f"; skipped {count} rows of {why}" for why, count in sorted(imported.skipped.items()))
    print(f"{args.index}: imported {imported.hashes} PDQ hashes of {imported.rows} items ({imported.new} new)"
          f"{skipped}; {len(index)} known items", file=sys.stderr)
    return 0


def _expiry(args: argparse.Namespace) -> str | None:
    """When the items being added stop matching: `--expires DATE` or `--expires-in DAYS` (not both), else never."""
    if args.expires is not None and args.expires_in is not None:
        raise _UsageError("give either --expires DATE or --expires-in DAYS, not both")
    if args.expires_in is not None:
        return utc_time((datetime.now(timezone.utc) + timedelta(days=args.expires_in)).isoformat())
    return args.expires


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

        from wildvision.service import Limits, access_log, create_app
    except ImportError as error:
        raise ImportError(f"`wildvision serve` needs the serve extra ({error.name} is missing): "
                          "pip install 'wildvision[serve]'") from None
    index = KnownItemIndex(args.match_index, classifier) if args.match_index else None
    # Options left out are absent from `args` (argparse.SUPPRESS), so the service's own defaults apply.
    limits = Limits(**{option.name: getattr(args, option.name) for option in fields(Limits) if hasattr(args, option.name)})
    app = create_app(classifier, index=index, limits=limits, api_keys=_api_keys(args.api_key_file),
                     match_policy=_match_policy(args))
    handler = logging.StreamHandler(sys.stdout)  # one JSON object a line, beside uvicorn's own log on stderr
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    # On SIGTERM uvicorn stops accepting, drains the requests in flight (up to --grace-period), then raises the signal
    # again under the handler that was there before it, so that the process dies of it (status 143). A drained
    # service has stopped cleanly: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=args.grace_period)
    return 0


def _api_keys(path: Path | None) -> list[str]:
    """Bearer tokens from `--api-key-file` (one a line; blank lines and # comments skipped) and from the environment
    variable WILDVISION_API_KEYS (comma-separated): both, when both are given."""
    keys = os.environ.get(_API_KEYS_VARIABLE, "").split(",")
    if path is not None:
        keys += [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
        if not any(key.strip() for key in keys):
            raise _UsageError(f"{path} holds no API key; give one a line, or leave out --api-key-file")
    return [key.strip() for key in keys if key.strip()]


def _spark(args: argparse.Namespace, classifier: Classifier) -> int:
    from wildvision.spark import (  # pyspark is imported by this command only
        listings_output, read_listings, score_archive, score_listings, session,
    )

    if args.match_index:
        KnownItemIndex(args.match_index, classifier)  # a missing or broken index is named before Spark starts
    spark = session(args.master)
    listings = read_listings(spark, args.listings) if args.listings else None  # a bad table fails before scoring
    summary = score_archive(spark, args.source, args.output, model=classifier.model_path,
                            match_index=args.match_index, batch_size=args.batch_size, partitions=args.partitions,
                            reading=ClassifierSettings.of(classifier))
    print(f"{args.output}: {summary}", file=sys.stderr)
    if listings is not None:
        records = spark.read.parquet(args.output)
        decided = score_listings(records, listings, operating_points=classifier.info.operating_points,
                                 lexicon=classifier.lexicon)
        decided.write.mode("overwrite").parquet(listings_output(args.output))  # derived anew from all the records
        counts = {row["decision"]: row["count"] for row in decided.groupBy("decision").count().collect()}
        print(f"{listings_output(args.output)}: {sum(counts.values())} listings; decisions: "
              f"{', '.join(f'{name} {count}' for name, count in sorted(counts.items(), key=str))}", file=sys.stderr)
    return 1 if summary.failed else 0


def _info(args: argparse.Namespace, classifier: Classifier) -> int:
    info = classifier.info
    if args.json:
        print(info.to_json())
        return 0
    metrics = info.metrics
    points = ", ".join(f"{label}: review >= {p.review:.3f}, block >= {p.block:.3f}" for label, p in info.operating_points.items())
    print(f"model      {classifier.identity}  ({classifier.model_path})")
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
    lexicon = Lexicon.load(args.lexicon)  # whether or not this run reads text: what --read-text would judge by
    print(f"lexicon    {lexicon.identity}: {', '.join(lexicon.labels)}")
    print(f"languages  {', '.join(lexicon.languages)}")
    card = twin_path(classifier.model_path, "float32").with_suffix(".md")  # one card for a model and its int8 twin
    if card.is_file():  # the shipped model's card travels next to it, in the wheel too
        print(f"card       {card}")
    return 0


class _UsageError(WildvisionError):
    """Options that contradict each other."""


class _NothingToScan(WildvisionError):
    """A folder with no image file, or a list with no path: a wrong path rather than an empty archive."""


def _add_model_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Which model and how it reads photos: accepted before the command and after it (`scan DIR --precision int8`).

    After the command the defaults are suppressed, so an option given before it is not reset by the subcommand.
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--model", type=Path, default=default(None),
                        help="a wildvision .onnx model (default: the shipped model)")
    parser.add_argument("--precision", choices=("float32", "int8"), default=default("float32"),
                        help="which shipped model: int8 is smaller and faster at a small, measured accuracy cost")
    parser.add_argument("--operating-points", type=Path, metavar="FILE", default=default(None),
                        help='your thresholds, JSON {"ivory": {"review": 0.8, "block": 0.99}} or TOML; labels not '
                             "given keep the model's; every record and answer states the thresholds used")
    parser.add_argument("--max-pixels", type=_positive_int, default=default(DEFAULT_MAX_PIXELS),
                        help=f"largest photo decoded, in pixels over all frames (default: {DEFAULT_MAX_PIXELS:,}); larger ones "
                             "get a too_large error")
    parser.add_argument("--max-frames", type=_positive_int, default=default(DEFAULT_MAX_FRAMES),
                        help=f"most frames of an animated or multi-page file, all scored (default: {DEFAULT_MAX_FRAMES})")
    parser.add_argument("--read-text", action="store_true", default=default(False),
                        help="also read the words on every photo; a product they name sends it to review "
                             '(needs wildvision[text]; about 10x the time per photo)')
    parser.add_argument("--lexicon", type=Path, metavar="FILE", default=default(None),
                        help="your own lexicon (TOML, the shipped lexicon.toml's format) instead of the shipped one, "
                             "for the words on photos (--read-text) and listings' titles and descriptions (--listings)")


def _add_match_policy_options(parser: argparse.ArgumentParser) -> None:
    """What a known-item match decides (`wildvision.decision.MatchPolicy`)."""
    defaults = MatchPolicy()
    parser.add_argument("--strict-match", choices=list(DECISION_RANK), help="what a close known-item match decides "
                        f"(PDQ within {defaults.strict_pdq_distance} bits, difference hash within "
                        f"{defaults.strict_hash_distance}, or cosine at least {defaults.strict_cosine}; default: "
                        f"{defaults.strict})")
    parser.add_argument("--loose-match", choices=list(DECISION_RANK),
                        help=f"what any other known-item match decides (default: {defaults.loose})")


def _add_expiry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expires", type=utc_time, metavar="DATE", help="the items stop matching from DATE "
                        "(ISO 8601, e.g. 2027-06-30, UTC)")
    parser.add_argument("--expires-in", type=_positive_int, metavar="DAYS", help="the items stop matching DAYS from now")


def _parser() -> argparse.ArgumentParser:
    statuses = "\n".join(f"  {status:<4} {meaning}" for status, meaning in EXIT_STATUSES.items())
    parser = argparse.ArgumentParser(prog="wildvision", description="Spot illegal wildlife products in listing photos.",
                                     epilog=f"exit statuses:\n{statuses}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_options(parser, suppress=False)
    # Every command that loads a model takes the model options after it too, as a parent parser's copies.
    model_options = argparse.ArgumentParser(add_help=False)
    _add_model_options(model_options, suppress=True)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    scan = commands.add_parser("scan", parents=[model_options],
                               help="score every photo under a folder (or in a list) into a file; resumable")
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
    scan.add_argument("--listings", type=Path, metavar="CSV", help="which listing each photo is in (columns path, "
                      "listing; path as the records name it: relative to FOLDER, /-separated, or as listed with "
                      "--files-from; optional title and description): also write one record per listing, decided by "
                      "its photos and its words, to OUTPUT's name with .listings.jsonl")
    scan.add_argument("--listing-folders", action="store_true",
                      help="each sub-folder of FOLDER is one listing (as --listings, from the folders)")
    _add_match_policy_options(scan)
    scan.set_defaults(parser=scan, command=_scan)

    predict = commands.add_parser("predict", parents=[model_options],
                                  help="score photos and print the results")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="one JSON object per photo")
    predict.add_argument("--explain", type=Path, metavar="DIR",
                         help="write a heat-map overlay per photo to DIR/<photo name>.explain.png for a reviewer")
    predict.add_argument("--match-index", type=Path, metavar="INDEX", help="also say which known item each photo re-posts")
    _add_match_policy_options(predict)
    predict.set_defaults(parser=predict, command=_predict)

    index = commands.add_parser("index", help="the known-item index: photos already confirmed as illegal")
    index_commands = index.add_subparsers(required=True, metavar="ACTION")
    add = index_commands.add_parser("add", parents=[model_options],
                                    help="add photos (files or folders) to an index, creating it if absent")
    add.add_argument("index", type=Path, help="the index file (SQLite), e.g. known-items.sqlite")
    add.add_argument("photos", nargs="+", type=Path, help="photo files, or folders scanned recursively; the path is "
                     "the item's reference, and adding a path again replaces its item")
    add.add_argument("--label", help="what the photos show (e.g. ivory): exported as the hash list's tags")
    add.add_argument("--source", metavar="NAME", help="the platform this index's own items come from, as exported "
                     "hash lists name it (kept in the index for later exports)")
    _add_expiry_options(add)
    add.set_defaults(parser=add, command=_index_add)
    reembed = index_commands.add_parser(
        "reembed", parents=[model_options], help="recompute the embedding, hashes and PDQ of items from their photos "
        "with this model (after a model upgrade)")
    reembed.add_argument("index", type=Path, help="the index file")
    reembed.add_argument("photos", nargs="+", type=Path, help="the items' photos, files or folders, named as they were "
                         "given to `index add` (the path is the reference)")
    reembed.set_defaults(parser=reembed, command=_index_reembed)
    listing = index_commands.add_parser("list", parents=[model_options], help="print every item: id, reference, "
                                        "added, label, source, expiry, signals (- for none)")
    listing.add_argument("index", type=Path, help="the index file")
    listing.add_argument("--json", action="store_true", help="one JSON object per item")
    listing.set_defaults(parser=listing, command=_index_list)
    remove = index_commands.add_parser("remove", parents=[model_options],
                                       help="remove items by their reference, or the expired ones")
    remove.add_argument("index", type=Path, help="the index file")
    remove.add_argument("references", nargs="*", help="the items' references, as `index list` prints them")
    remove.add_argument("--expired", action="store_true", help="also remove every item whose expiry has passed")
    remove.set_defaults(parser=remove, command=_index_remove)
    stats = index_commands.add_parser("stats", parents=[model_options], help="how many items (expired, with PDQ, "
                                      "embedded by this model), the oldest and newest, the file size and the model")
    stats.add_argument("index", type=Path, help="the index file")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(parser=stats, command=_index_stats)
    export = index_commands.add_parser("export", parents=[model_options], help="write the items' PDQ hashes to a "
                                       "hash list (CSV, ThreatExchange's columns; no photos)")
    export.add_argument("index", type=Path, help="the index file")
    export.add_argument("file", type=Path, help="the hash list to write, e.g. known-items.pdq.csv")
    export.add_argument("--source", metavar="NAME", help="the platform this index's own items are named as coming "
                        "from (default: the index's, set by `index add --source`)")
    export.set_defaults(parser=export, command=_index_export)
    imports = index_commands.add_parser("import", parents=[model_options], help="add a hash list's PDQ hashes as "
                                        "items matched by PDQ alone, creating the index if absent; all rows or none")
    imports.add_argument("index", type=Path, help="the index file")
    imports.add_argument("file", type=Path, help="a hash list (`index export`'s, or `threatexchange dataset -P --csv`)")
    imports.add_argument("--source", metavar="NAME", help="the source platform of rows that name none (collab)")
    _add_expiry_options(imports)
    imports.set_defaults(parser=imports, command=_index_import)

    serve = commands.add_parser("serve", parents=[model_options],
                                help="an HTTP service: POST photos to /predict (needs wildvision[serve])")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=_port, default=8000, help="(default: 8000)")
    serve.add_argument("--match-index", type=Path, metavar="INDEX", help="add the known-item match to every answer")
    serve.add_argument("--threads", type=_positive_int, help="onnxruntime threads (default: all cores)")
    # Left out: absent from the namespace, so that `Limits` (wildvision.service) holds the defaults.
    limit = {"default": argparse.SUPPRESS}
    serve.add_argument("--max-bytes", type=_positive_int, **limit,
                       help="largest request body in bytes: a photo, or a whole batch (default: 20 MiB)")
    serve.add_argument("--max-batch", type=_positive_int, **limit, help="most photos per /predict/batch (default: 32)")
    serve.add_argument("--max-concurrency", type=_positive_int, **limit,
                       help="requests read, decoded and scored at once (default: the number of cores)")
    serve.add_argument("--max-queue", type=_count_from_zero, **limit, help="requests waiting for a free slot; "
                       "beyond them a request is refused at once with 503 and Retry-After (default: 64)")
    serve.add_argument("--timeout", type=_seconds, **limit,
                       help="seconds from a request's arrival to its answer, else 504 (default: 30)")
    serve.add_argument("--read-timeout", type=_seconds, **limit,
                       help="seconds for the request body to arrive once a slot is free, else 408; also the longest "
                       "a refused upload is read and thrown away (default: 10)")
    serve.add_argument("--max-discard", type=_positive_int, **limit,
                       help="most bytes of a refused upload read and thrown away so that its client reads the "
                       "answer instead of a reset; beyond it the connection closes at once (default: 64 MiB)")
    serve.add_argument("--grace-period", type=_seconds, default=20.0, help="on SIGTERM, seconds to finish the "
                       "requests in flight before exiting (default: 20, inside Kubernetes' 30)")
    serve.add_argument("--api-key-file", type=Path, metavar="FILE", help="require `Authorization: Bearer <key>` "
                       f"with a key from FILE (one a line); keys in ${_API_KEYS_VARIABLE} (comma-separated) are "
                       "required and accepted too; /health stays open")
    _add_match_policy_options(serve)
    serve.set_defaults(parser=serve, command=_serve)

    spark = commands.add_parser("spark", parents=[model_options],
                                help="score an archive on Apache Spark into a Parquet folder "
                                "(needs wildvision[spark])")
    spark.add_argument("source", help="a folder (searched recursively) or glob: a local path, file://, hdfs://, s3a://")
    spark.add_argument("-o", "--output", required=True, help="the Parquet folder, on any file system Spark writes to; "
                       "same columns as `scan -o x.parquet`; re-running the same command continues an interrupted run")
    spark.add_argument("--master", help="e.g. local[4] (default: spark-submit's, else local[*])")
    spark.add_argument("--partitions", type=_positive_int, help="about how many tasks score the archive, each writing one "
                       "Parquet file (default: Spark's split, about 30 photos per task)")
    spark.add_argument("--batch-size", type=_positive_int, default=16)
    spark.add_argument("--listings", metavar="TABLE", help="a listing table, CSV or Parquet, as scan --listings takes "
                       "it (path as the records name it, listing, optional title and description): also write one "
                       "record per listing to OUTPUT's name with .listings.parquet")
    spark.add_argument("--match-index", type=Path, metavar="INDEX",
                       help="a known-item index (see `index add`), shipped to the executors: adds the match_* columns")
    spark.set_defaults(parser=spark, command=_spark)

    info = commands.add_parser("info", parents=[model_options],
                               help="what the model is: labels, thresholds, measured accuracy, notes")
    info.add_argument("--json", action="store_true", help="the model's full metadata")
    info.set_defaults(parser=info, command=_info)
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number (of threads, photos, tasks, bytes, ...) no smaller than `minimum`."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


_positive_int = _at_least(1)
_count_from_zero = _at_least(0)  # e.g. no queue at all


def _port(text: str) -> int:
    """An argparse type: a TCP port to listen on."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535, got {value}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a duration in seconds, above 0 and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
