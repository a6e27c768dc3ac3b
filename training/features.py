"""A model's own view of photos, computed once: the pooled embedding its classifier reads, and its logits.

Adapting a model, selecting photos to label and comparing two models all start from what the base model's graph
outputs for each photo. Photos go through the library's loading and preprocessing, so the features are exactly those
the model computes at inference. Results are kept in a cache folder, one chunk file per batch of photos, keyed by the
model file's digest and each photo's SHA-256: an interrupted run keeps every finished chunk, and a rerun (or another
command on the same photos) computes only what is missing.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wildvision.classifier import Classifier
from wildvision.hashing import file_sha256
from wildvision.images import ImageLoadError, load_image

__all__ = ["Features", "batch_features", "compute_features"]

_BATCH = 16  # photos per forward pass and per cache chunk: a chunk is what an interruption can cost


@dataclass(frozen=True)
class Features:
    """One row per readable photo, in the order given; `kept` indexes the photos they belong to."""

    embeddings: np.ndarray  # (N, D) float32: the classifier's input, not normalised
    logits: np.ndarray  # (N, labels) float32: the model's own raw outputs
    kept: list[int]  # positions of the readable photos among those asked for
    unreadable: list[str]  # one message per photo that could not be read


def compute_features(classifier: Classifier, paths: Sequence[Path], *, cache: Path | None = None) -> Features:
    """Embeddings and logits of the photos at `paths`; unreadable photos are named on stderr and left out."""
    digests = [_photo_digest(Path(path)) for path in paths]
    store = _Cache(cache / classifier.identity.digest.replace(":", "-")) if cache is not None else None
    known = store.read() if store is not None else {}
    missing = [i for i, digest in enumerate(digests) if digest is not None and digest not in known]
    for start in range(0, len(missing), _BATCH):
        chunk = missing[start : start + _BATCH]
        computed = _forward(classifier, [paths[i] for i in chunk])
        found = {digests[i]: row for i, row in zip(chunk, computed) if row is not None}
        known.update(found)
        if store is not None:
            store.write(found)
    kept = [i for i, digest in enumerate(digests) if digest in known]
    unreadable = [f"{path}: cannot be read or decoded" for path, digest in zip(paths, digests) if digest not in known]
    if unreadable:
        print(f"{len(unreadable)} unreadable photo(s) left out, e.g. {unreadable[0]}", file=sys.stderr)
    rows = [known[digests[i]] for i in kept]
    embeddings = np.stack([row[0] for row in rows]) if rows else np.zeros((0, 0), np.float32)
    logits = np.stack([row[1] for row in rows]) if rows else np.zeros((0, len(classifier.info.labels)), np.float32)
    return Features(embeddings, logits, kept, unreadable)


def _forward(classifier: Classifier, paths: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each photo's (embedding, logits), or None where it cannot be read; one forward pass for the readable ones."""
    side = classifier.info.preprocessing.input_size
    photos = []
    for path in paths:
        try:
            photos.append(load_image(path, min_side=side))  # the cover frame: one row per photo
        except ImageLoadError:
            photos.append(None)
    readable = [photo for photo in photos if photo is not None]
    if not readable:
        return [None] * len(paths)
    embeddings, logits = batch_features(classifier, classifier.prepare_images(readable))
    rows = iter(zip(embeddings, logits))
    return [next(rows) if photo is not None else None for photo in photos]


def batch_features(classifier: Classifier, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of a preprocessed NCHW batch, uncached."""
    # Not `Classifier.embed`: it gives unit-length vectors for matching, and the head needs the classifier's actual
    # input.
    embeddings, logits = classifier.outputs(batch, ("embedding", "logits"))
    return embeddings.astype(np.float32), logits.astype(np.float32)


def _photo_digest(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


class _Cache:
    """Chunk files of (photo digest, embedding, logits) under one model's folder; written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            with np.load(chunk) as stored:
                known.update(zip(stored["digests"].tolist(), zip(stored["embeddings"], stored["logits"])))
        return known

    def write(self, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        digests = sorted(rows)
        name = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        partial = self.folder / f"partial-{name}.npz"
        np.savez(partial, digests=np.array(digests), embeddings=np.stack([rows[d][0] for d in digests]),
                 logits=np.stack([rows[d][1] for d in digests]))
        partial.replace(self.folder / f"chunk-{name}.npz")  # a killed write leaves a partial file, never a bad chunk
