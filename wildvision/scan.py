"""Score a folder of photos into one record per image file, resumable, never stopped by a bad file.

Decoding runs in a thread pool (Pillow releases the GIL while decoding) ahead of inference, a bounded number of
batches at a time, so both CPU cores stay busy and memory does not grow with the archive. Records are appended to a
JSON Lines file and flushed batch by batch; re-running the same scan skips every photo already recorded and drops a
half-written last line, so an interrupted run loses nothing and writes nothing twice.
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

__all__ = ["IMAGE_SUFFIXES", "ScanRecord", "ScanSummary", "TerminalProgress", "find_images", "scan", "scan_to_jsonl"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ScanRecord:
    """One input file's outcome: scores and a decision, or an error saying why it could not be scored."""

    path: str  # relative to the scanned folder, with forward slashes
    scores: dict[str, float] | None
    label: str | None
    decision: str | None
    model_name: str
    model_version: str
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass
class ScanSummary:
    scored: int = 0
    failed: int = 0
    skipped_already_done: int = 0
    decisions: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, record: ScanRecord) -> None:
        if record.error is None:
            self.scored += 1
            self.decisions[record.decision] += 1
        else:
            self.failed += 1

    def __str__(self) -> str:
        rate = (self.scored + self.failed) / self.seconds if self.seconds else 0.0
        decisions = ", ".join(f"{name} {count}" for name, count in sorted(self.decisions.items())) or "none"
        return (f"scored {self.scored}, failed {self.failed}, already done {self.skipped_already_done}; "
                f"decisions: {decisions}; {rate:.1f} photos/s")


def find_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively and sorted; symbolic links to folders are not followed (no loops)."""
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    found = []
    for folder, subfolders, files in os.walk(root, onerror=None):
        subfolders.sort()
        found += [Path(folder) / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def scan(
    paths: Iterable[Path], classifier: Classifier, *, root: Path, batch_size: int = 16, workers: int = 2
) -> Iterator[ScanRecord]:
    """Yield one record per path, in order; unreadable photos yield error records."""
    spec = classifier.info.preprocessing

    def prepare(path: Path) -> np.ndarray | str:
        try:
            return to_tensor(load_image(path, min_side=spec.input_size), spec)
        except ImageLoadError as error:
            return error.reason
        except OSError as error:  # vanished or unreadable between listing and reading
            return f"cannot read file ({error.strerror or error})"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[list[Path], list[Future]]] = deque()
        for batch in _batches(paths, batch_size):
            pending.append((batch, [pool.submit(prepare, path) for path in batch]))
            if len(pending) > 2:  # two batches decode while one is scored: bounded memory
                yield from _score(*pending.popleft(), classifier, root)
        while pending:
            yield from _score(*pending.popleft(), classifier, root)


def scan_to_jsonl(
    root: Path,
    output: Path,
    classifier: Classifier,
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> ScanSummary:
    """Scan `root` into `output`, continuing a previous run of the same scan if `output` exists."""
    started = time.monotonic()
    summary = ScanSummary()
    done = _recorded_paths(output)
    todo = [path for path in find_images(root) if _relative(path, root) not in done]
    summary.skipped_already_done = len(done)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as sink:
        for count, record in enumerate(scan(todo, classifier, root=root, batch_size=batch_size, workers=workers), 1):
            sink.write(record.to_json() + "\n")
            summary.add(record)
            if count % batch_size == 0 or count == len(todo):
                sink.flush()  # a killed run keeps every record written before its last batch
                if progress:
                    progress(count, len(todo))
    summary.seconds = time.monotonic() - started
    return summary


class TerminalProgress:
    """A one-line progress report with rate and ETA on stderr; silent when stderr is not a terminal (pipes, logs)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        rate = done / max(1e-6, time.monotonic() - self.started)
        eta = (total - done) / rate if rate else 0.0
        print(f"\r{done}/{total} photos  {rate:.1f}/s  ETA {eta:.0f}s ", end="" if done < total else "\n", file=sys.stderr)


def _score(batch: list[Path], futures: list[Future], classifier: Classifier, root: Path) -> Iterator[ScanRecord]:
    prepared = [future.result() for future in futures]
    tensors = [item for item in prepared if isinstance(item, np.ndarray)]
    predictions = iter(classifier.predict_tensors(np.stack(tensors)) if tensors else [])
    info = classifier.info
    for path, item in zip(batch, prepared):
        relative = _relative(path, root)
        if isinstance(item, str):
            yield ScanRecord(relative, None, None, None, info.name, info.version, error=item)
        else:
            prediction = next(predictions)
            yield ScanRecord(relative, prediction.scores, prediction.label, prediction.decision, info.name, info.version)


def _batches(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _recorded_paths(output: Path) -> set[str]:
    """Paths already in `output`; a torn last line (the run was killed mid-write) is cut off so it is redone."""
    if not output.exists():
        return set()
    done, valid_bytes = set(), 0
    with output.open("rb") as source:
        for line in source:
            try:
                if not line.endswith(b"\n"):
                    break
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError):
                break
            valid_bytes += len(line)
    with output.open("r+b") as sink:
        sink.truncate(valid_bytes)
    return done
