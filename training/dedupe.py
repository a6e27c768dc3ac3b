"""Find near-duplicate photos (one picture uploaded twice, resized or re-compressed) so splits never separate them.

The hash itself (`wildvision.hashing.difference_hash`, 256 bits) lives in the library, which also uses it to match
re-posted photos against known items; here it only groups a training set's photos.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from wildvision.hashing import DEFAULT_MAX_DISTANCE, difference_hash, hamming_distances
from wildvision.images import ImageLoadError, load_image

__all__ = ["DEFAULT_MAX_DISTANCE", "difference_hash", "hash_files", "near_duplicate_pairs"]

_UNREADABLE = np.full(32, 0xFF, np.uint8)  # a placeholder that matches nothing real: unreadable photos pair with no one
_ROWS_PER_CHUNK = 256  # bounds the pairwise comparison's memory to chunk x photos x 32 bytes


def hash_files(paths: Sequence[Path], *, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(hashes as an N x 32 uint8 array, readable flags); unreadable photos are reported by training, not here."""

    def one(path: Path) -> np.ndarray | None:
        try:
            return difference_hash(load_image(path, min_side=64))
        except ImageLoadError:
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes outside the GIL
        results = list(pool.map(one, paths))
    readable = np.array([r is not None for r in results], dtype=bool)
    hashes = np.stack([r if r is not None else _UNREADABLE for r in results]) if results else np.zeros((0, 32), np.uint8)
    return hashes, readable


def near_duplicate_pairs(
    hashes: np.ndarray, readable: np.ndarray, *, max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[tuple[int, int]]:
    """Index pairs (i < j) of readable photos whose hashes differ in at most `max_distance` bits."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _ROWS_PER_CHUNK):
        chunk = hashes[start : start + _ROWS_PER_CHUNK]
        distances = hamming_distances(chunk, hashes)
        rows, columns = np.nonzero(distances <= max_distance)
        pairs += [(start + r, c) for r, c in zip(rows.tolist(), columns.tolist())
                  if start + r < c and readable[start + r] and readable[c]]
    return pairs
