"""Score a photo archive into one record per input file: fast, resumable, never stopped by a bad file.

Decoding runs in a thread pool (Pillow releases the GIL while decoding, and JPEGs are decoded at reduced scale) a
bounded number of batches ahead of onnxruntime, so both CPU cores stay busy and memory does not grow with the archive.
Batches are scored side by side in their own threads (onnxruntime releases the GIL too); with one single-threaded
scorer per core, decoding never stalls an inference that waits for its slowest thread.
With a known-item index, each record also says which known item the photo re-posts (`match`); the hash is computed
while decoding and the embedding comes out of the same forward pass as the scores, so matching adds little.
Records are appended to a journal (`OUTPUT.partial.jsonl`) and flushed batch by batch. Re-running the same scan reads
the journal, skips every input already recorded and drops a half-written last line, so a run killed at any moment loses
nothing and writes nothing twice. At the end the final file is written in the requested format under a temporary name
and renamed into place: `OUTPUT` is either absent or complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from wildvision.classifier import Classifier, ModelIdentity, PreparedPhoto, describe_thresholds
from wildvision.decision import MatchPolicy
from wildvision.errors import WildvisionError
from wildvision.images import IMAGE_SUFFIXES, ImageLoadError
from wildvision.known_items import KnownItemIndex
from wildvision.records import (
    RecordLayout,
    ScanRecord,
    columns_of,
    read_records,
    write_records,
)
from wildvision.scorer import Scorer

__all__ = [
    "IMAGE_SUFFIXES", "ResumeError", "ScanInput", "ScanRecord", "ScanSummary", "TerminalProgress", "check_same_run",
    "files_from_list", "find_images", "layout_of", "run_facts", "scan", "scan_to_file",
]

_BATCHES_AHEAD = 2  # batches decoding while others are scored: enough to hide decoding, few enough for flat memory


@dataclass(frozen=True)
class ScanInput:
    file: Path | bytes  # where to read it, or its bytes already read (Spark's binaryFile `content`)
    name: str  # what the record calls it: relative to the scanned folder, as listed, or its URI


@dataclass
class ScanSummary:
    scored: int = 0
    failed: int = 0
    already_done: int = 0
    decisions: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # files found but not images, by suffix (see `find_images`)
    seconds: float = 0.0

    def add(self, record: ScanRecord) -> None:
        if record.error is None:
            self.scored += 1
            self.decisions[record.decision] += 1
        else:
            self.failed += 1
            self.failures[record.error_category] += 1

    def __str__(self) -> str:
        rate = (self.scored + self.failed) / self.seconds if self.seconds else 0.0
        decisions = ", ".join(f"{name} {count}" for name, count in sorted(self.decisions.items())) or "none"
        failures = ", ".join(f"{name} {count}" for name, count in sorted(self.failures.items()))
        skipped = ", ".join(f"{suffix} {count}" for suffix, count in sorted(self.skipped.items()))
        return (f"scored {self.scored}, failed {self.failed}{f' ({failures})' if failures else ''}, "
                f"already done {self.already_done}"
                f"{f', skipped {sum(self.skipped.values())} files that are not images ({skipped})' if skipped else ''}"
                f"; decisions: {decisions}; {rate:.1f} photos/s")


def find_images(root: Path, *, skipped: Counter | None = None) -> Iterator[ScanInput]:
    """Image files under `root` (by suffix, `IMAGE_SUFFIXES`), recursively, in sorted order, lazily (an archive's
    listing never sits in memory). Every other file is counted in `skipped` by its suffix, so none goes unmentioned.

    Symbolic links to files are followed; links to folders are not, so a link loop cannot trap the walk.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                path = Path(folder) / name
                yield ScanInput(path, path.relative_to(root).as_posix())
            elif skipped is not None:
                skipped[suffix or "(no suffix)"] += 1


def files_from_list(lines: Iterable[str]) -> Iterator[ScanInput]:
    """Inputs from a list of paths, one a line (a file or stdin); every listed path gets a record, whatever its suffix."""
    for line in lines:
        name = line.rstrip("\r\n")
        if name:
            yield ScanInput(Path(name), name)


def scan(
    inputs: Iterable[ScanInput], classifier: Classifier, *, batch_size: int = 16, workers: int = 2, scorers: int = 1,
    index: KnownItemIndex | None = None, match_policy: MatchPolicy = MatchPolicy(),
) -> Iterator[ScanRecord]:
    """Yield one record per input, in order; unreadable photos yield error records.

    `workers` threads decode; `scorers` batches are scored at once, each on the classifier's own threads. For the
    most photos per second give one scorer per core and a `Classifier(threads=1)`: on this small model, whole batches
    side by side beat one batch split across cores, and the decoding threads then slow no scorer down.
    With `index`, records carry `match` and a match decides by `match_policy` (`wildvision.scorer.Scorer`); with a
    classifier that reads text, `text` (see `layout_of`).
    """
    scorer = Scorer(classifier, index=index, policy=match_policy)

    def prepare(item: ScanInput) -> PreparedPhoto | ImageLoadError:
        try:
            return scorer.prepare(item.file)
        except ImageLoadError as error:
            return ImageLoadError(item.name, error.reason, error.category)

    with ThreadPoolExecutor(max_workers=workers) as decoders, ThreadPoolExecutor(max_workers=scorers) as scoring:
        pending: deque[Future[list[ScanRecord]]] = deque()
        for batch in _batches(inputs, batch_size):
            prepared = [decoders.submit(prepare, item) for item in batch]
            pending.append(scoring.submit(_score, batch, prepared, scorer))
            if len(pending) > scorers + _BATCHES_AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def scan_to_file(
    inputs: Iterable[ScanInput],
    output: Path,
    classifier: Classifier,
    *,
    batch_size: int = 16,
    workers: int = 2,
    scorers: int = 1,
    progress: Callable[[int], None] | None = None,
    index: KnownItemIndex | None = None,
    match_policy: MatchPolicy = MatchPolicy(),
) -> ScanSummary:
    """Scan into `output` (`.jsonl`, `.csv` or `.parquet`), continuing an interrupted or earlier run of the same scan.

    With `index`, every record gets a `match` field, and a match decides by `match_policy`. An earlier output must
    come from the same model file, thresholds and matching, else a `ResumeError` says so before anything is scored.
    `progress` is called after each batch with the number of records the output holds so far, those of an earlier run
    included.
    """
    layout = layout_of(classifier, index)
    started = time.monotonic()
    summary = ScanSummary()
    journal = output.with_name(output.name + ".partial.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    _check_same_scan(journal, output, classifier, layout)
    if output.exists() and not journal.exists():  # a finished earlier scan: keep its records, add what is new
        with journal.open("w", encoding="utf-8") as sink:
            sink.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in read_records(output))
    done = _recorded_names(journal)
    summary.already_done = len(done)
    todo = (item for item in inputs if item.name not in done)
    with journal.open("a", encoding="utf-8") as sink:
        records = scan(todo, classifier, batch_size=batch_size, workers=workers, scorers=scorers, index=index,
                       match_policy=match_policy)
        for count, record in enumerate(records, 1):
            sink.write(json.dumps(layout.to_dict(record), ensure_ascii=False) + "\n")
            summary.add(record)
            if count % batch_size == 0:
                sink.flush()  # a killed run keeps every record of every finished batch
                if progress:
                    progress(summary.already_done + count)
    write_records(_journal_records(journal), output, layout)
    journal.unlink()
    summary.seconds = time.monotonic() - started
    return summary


class TerminalProgress:
    """A one-line progress report on stderr, only on a terminal: records so far, of `total` when it is known (set it
    once the inputs are counted), the rate of this run and an ETA."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()
        self._first: tuple[int, float] | None = None  # the first report: an earlier run's records are not this run's rate

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (done, now)
        rate = (done - self._first[0]) / max(1e-6, now - self._first[1])
        eta = f"  ETA {_duration((self.total - done) / rate)}" if self.total and rate else ""
        total = f"/{self.total}" if self.total else ""
        print(f"\r{done}{total} photos  {rate:.1f}/s{eta} ", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _duration(seconds: float) -> str:
    """`42s`, `7m05s` or `3h12m`: an ETA a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _score(batch: list[ScanInput], futures: list[Future], scorer: Scorer) -> list[ScanRecord]:
    """The batch's records, in order, once its photos are decoded (runs in a scoring thread)."""
    prepared = [future.result() for future in futures]
    scored = iter(scorer.score([item for item in prepared if isinstance(item, PreparedPhoto)]))
    records: list[ScanRecord] = []
    for item, result in zip(batch, prepared):
        if isinstance(result, ImageLoadError):
            records.append(ScanRecord.failed(item.name, result, scorer.classifier.identity))
        else:
            prediction, match = next(scored)
            records.append(ScanRecord.scored(item.name, prediction, match=match))
    return records


def _batches(items: Iterable[ScanInput], size: int) -> Iterator[list[ScanInput]]:
    batch: list[ScanInput] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _recorded_names(journal: Path) -> set[str]:
    """Names already in the journal; a torn last line (the run was killed mid-write) is cut off so it is redone."""
    if not journal.exists():
        return set()
    done, valid_bytes = set(), 0
    with journal.open("rb") as source:
        for line in source:
            try:
                if not line.endswith(b"\n"):
                    break
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError):
                break
            valid_bytes += len(line)
    with journal.open("r+b") as sink:
        sink.truncate(valid_bytes)
    return done


class ResumeError(WildvisionError, ValueError):
    """An earlier scan into the same output was made differently: continuing it would mix two kinds of records."""


def layout_of(classifier: Classifier, index: KnownItemIndex | None = None) -> RecordLayout:
    """The records' layout of a scan with this classifier (does it read text?) and known-item index."""
    return RecordLayout(classifier.info.labels, match=index is not None, text=classifier.text_reader is not None)


def run_facts(
    classifier: Classifier, layout: RecordLayout, match_policy: MatchPolicy = MatchPolicy()
) -> dict[str, object]:
    """What a scan's records depend on: the model file, its thresholds and labels, matching and the policy a match
    decides by (None without matching), and the lexicon text is read with (None: no text read). The one list that
    `scan_to_file` and `wildvision.spark` compare before they continue an earlier output (`check_same_run`); Spark
    notes it in its output folder, a scan finds it in its first record (which does not state the policy)."""
    return {"model": str(classifier.identity), "thresholds": describe_thresholds(classifier.info.operating_points),
            "labels": list(layout.labels), "match_index": layout.match,
            "match_policy": match_policy.describe() if layout.match else None,
            "read_text": classifier.lexicon.identity if classifier.text_reader else None}


def check_same_run(earlier: Mapping[str, object], now: Mapping[str, object], output: str | Path) -> None:
    """Refuse to continue `output` when a fact of the earlier run (`run_facts`) differs from this run's: records of
    two models, thresholds or lexicons (or a missing match read as "no match") would be mixed in one output. A fact
    the earlier run did not leave (an error record states no thresholds) is not compared."""
    if any(earlier[name] != now[name] for name in earlier.keys() & now.keys()):
        raise ResumeError(f"{output} holds records of {_describe_run(earlier)}, but this run scores with "
                          f"{_describe_run(now)}; use the same --model, --precision, --operating-points, --match-index, "
                          "--strict-match, --loose-match and --read-text as before, or another output")


def _describe_run(facts: Mapping[str, object]) -> str:
    details = [f"labels {', '.join(facts['labels'])}"] if "labels" in facts else []  # type: ignore[arg-type]
    details += [f"thresholds {facts['thresholds']}"] if "thresholds" in facts else []
    matching = "with --match-index" if facts["match_index"] else "without --match-index"
    if facts.get("match_policy"):
        matching += f" (match policy {facts['match_policy']})"
    if "read_text" not in facts:  # the lexicon is stated by scored records only
        text = "reading text"
    else:
        text = f"reading text ({facts['read_text']})" if facts["read_text"] else "without --read-text"
    stated = f" ({'; '.join(details)})" if details else ""
    return f"{facts['model']}{stated} {matching}, {text}"


def _check_same_scan(journal: Path, output: Path, classifier: Classifier, layout: RecordLayout) -> None:
    """Refuse to continue an earlier scan whose first record states other `run_facts`, or that wrote other columns or
    fields (another model's labels, with or without matching or reading text, an older wildvision)."""
    written = columns_of(output) if output.exists() and not journal.exists() else None
    if written not in (None, layout.column_names):
        raise ResumeError(f"{output}: an earlier scan wrote other columns ({', '.join(written or [])}): "
                          f"another model's labels, {'no ' if layout.match else ''}--match-index, "
                          f"{'no ' if layout.text else ''}--read-text, or an older wildvision; use another output file")
    first = _first_record(journal, output)
    if first is None:
        return
    check_same_run(_facts_of_record(first), run_facts(classifier, layout), output)
    # What the facts cannot tell: a first record that is an error names no lexicon, yet has `text` if text was read.
    if set(first) != set(layout.field_names):
        raise ResumeError(f"{output}: an earlier scan wrote records with other fields ({', '.join(first)}): "
                          f"{'no ' if layout.text else ''}--read-text, or an older wildvision; use the same options "
                          "or another output file")


def _facts_of_record(record: Mapping[str, object]) -> dict[str, object]:
    """The `run_facts` that one record states; an error record states no thresholds, labels or lexicon."""
    facts: dict[str, object] = {"model": str(ModelIdentity.of_fields(record)), "match_index": "match" in record}
    if isinstance(record["scores"], dict):
        facts |= {"thresholds": record["thresholds"], "labels": list(record["scores"])}
    if "text" not in record:
        facts["read_text"] = None
    elif isinstance(record["text"], dict):
        facts["read_text"] = record["text"]["lexicon"]
    return facts


def _first_record(journal: Path, output: Path) -> dict | None:
    if journal.exists():
        with journal.open(encoding="utf-8") as source:
            line = source.readline()
        return json.loads(line) if line.endswith("\n") else None  # a torn line is dropped on resuming anyway
    return next(read_records(output), None) if output.exists() else None


def _journal_records(journal: Path) -> Iterator[dict[str, object]]:
    with journal.open(encoding="utf-8") as source:
        for line in source:
            yield json.loads(line)
