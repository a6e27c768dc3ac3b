"""Score a photo archive into one record per input file: fast, resumable, never stopped by a bad file.

Decoding runs in a thread pool (Pillow releases the GIL while decoding, and JPEGs are decoded at reduced scale) a
bounded number of batches ahead of onnxruntime, so both CPU cores stay busy and memory does not grow with the archive.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from wildvision.classifier import Classifier
from wildvision.images import ImageLoadError, load_image
from wildvision.preprocess import to_tensor
from wildvision.records import read_records, write_records

__all__ = [
    "IMAGE_SUFFIXES", "ScanInput", "ScanRecord", "ScanSummary", "TerminalProgress", "files_from_list", "find_images",
    "scan", "scan_to_file",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_BATCHES_AHEAD = 2  # batches decoding while one is scored: enough to hide decoding, small enough to keep memory flat


@dataclass(frozen=True)
class ScanInput:
    file: Path  # where to read it
    name: str  # what the record calls it: relative to the scanned folder, or as listed


@dataclass(frozen=True)
class ScanRecord:
    """One input file's outcome: scores and a decision, or an error saying why it could not be scored."""

    path: str
    scores: dict[str, float] | None
    label: str | None
    decision: str | None
    model_name: str
    model_version: str
    error: str | None = None
    error_category: str | None = None  # empty, not_an_image, corrupt, too_large, unreadable

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ScanSummary:
    scored: int = 0
    failed: int = 0
    already_done: int = 0
    decisions: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
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
        return (f"scored {self.scored}, failed {self.failed}{f' ({failures})' if failures else ''}, "
                f"already done {self.already_done}; decisions: {decisions}; {rate:.1f} photos/s")


def find_images(root: Path) -> Iterator[ScanInput]:
    """Image files under `root`, recursively, in sorted order, lazily (an archive's listing never sits in memory).

    Symbolic links to files are followed; links to folders are not, so a link loop cannot trap the walk.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = Path(folder) / name
                yield ScanInput(path, path.relative_to(root).as_posix())


def files_from_list(lines: Iterable[str]) -> Iterator[ScanInput]:
    """Inputs from a list of paths, one a line (a file or stdin); every listed path gets a record, whatever its suffix."""
    for line in lines:
        name = line.rstrip("\r\n")
        if name:
            yield ScanInput(Path(name), name)


def scan(
    inputs: Iterable[ScanInput], classifier: Classifier, *, batch_size: int = 16, workers: int = 2
) -> Iterator[ScanRecord]:
    """Yield one record per input, in order; unreadable photos yield error records."""
    spec = classifier.info.preprocessing

    def prepare(item: ScanInput) -> np.ndarray | ImageLoadError:
        try:
            return to_tensor(load_image(item.file, min_side=spec.input_size), spec)
        except ImageLoadError as error:
            return error
        except OSError as error:  # vanished or unreadable between listing and reading
            return ImageLoadError(item.name, f"cannot read file ({error.strerror or error})", "unreadable")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[list[ScanInput], list[Future]]] = deque()
        for batch in _batches(inputs, batch_size):
            pending.append((batch, [pool.submit(prepare, item) for item in batch]))
            if len(pending) > _BATCHES_AHEAD:
                yield from _score(*pending.popleft(), classifier)
        while pending:
            yield from _score(*pending.popleft(), classifier)


def scan_to_file(
    inputs: Iterable[ScanInput],
    output: Path,
    classifier: Classifier,
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> ScanSummary:
    """Scan into `output` (`.jsonl`, `.csv` or `.parquet`), continuing an interrupted or earlier run of the same scan."""
    started = time.monotonic()
    summary = ScanSummary()
    journal = output.with_name(output.name + ".partial.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and not journal.exists():  # a finished earlier scan: keep its records, add what is new
        with journal.open("w", encoding="utf-8") as sink:
            sink.writelines(json.dumps(record) + "\n" for record in read_records(output, classifier.info.labels))
    done = _recorded_names(journal)
    summary.already_done = len(done)
    todo = (item for item in inputs if item.name not in done)
    with journal.open("a", encoding="utf-8") as sink:
        for count, record in enumerate(scan(todo, classifier, batch_size=batch_size, workers=workers), 1):
            sink.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            summary.add(record)
            if count % batch_size == 0:
                sink.flush()  # a killed run keeps every record of every finished batch
                if progress:
                    progress(count)
    write_records(_journal_records(journal), output, classifier.info.labels)
    journal.unlink()
    summary.seconds = time.monotonic() - started
    return summary


class TerminalProgress:
    """A one-line progress report (count, rate, ETA when the total is known) on stderr, only on a terminal."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        rate = done / max(1e-6, time.monotonic() - self.started)
        eta = f"  ETA {(self.total - done) / rate:.0f}s" if self.total and rate else ""
        total = f"/{self.total}" if self.total else ""
        print(f"\r{done}{total} photos  {rate:.1f}/s{eta} ", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _score(batch: list[ScanInput], futures: list[Future], classifier: Classifier) -> Iterator[ScanRecord]:
    prepared = [future.result() for future in futures]
    tensors = [item for item in prepared if isinstance(item, np.ndarray)]
    predictions = iter(classifier.predict_tensors(np.stack(tensors)) if tensors else [])
    info = classifier.info
    for item, result in zip(batch, prepared):
        if isinstance(result, ImageLoadError):
            yield ScanRecord(item.name, None, None, None, info.name, info.version, result.reason, result.category)
        else:
            prediction = next(predictions)
            yield ScanRecord(item.name, prediction.scores, prediction.label, prediction.decision, info.name, info.version)


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


def _journal_records(journal: Path) -> Iterator[dict[str, object]]:
    with journal.open(encoding="utf-8") as source:
        for line in source:
            yield json.loads(line)
