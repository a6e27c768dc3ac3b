"""Which of many stored 256-bit hashes lie within a Hamming distance of a query: the search behind known-item
matching by PDQ.

`HashSearch` is exact: every stored hash within the distance is found. This version compares every stored hash
(N x 32 bytes per query); it is the reference that a faster index must agree with.
"""

from __future__ import annotations

import numpy as np

from wildvision.hashing import HASH_BYTES, hamming_distances

__all__ = ["HashSearch"]

_ROWS_PER_PASS = 65_536  # stored hashes compared per step: bounds the M x N x 32-byte temporary


class HashSearch:
    """A fixed set of N hashes (N x 32 uint8), searched by Hamming distance; safe to share across threads."""

    def __init__(self, hashes: np.ndarray) -> None:
        hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
        if hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
            raise ValueError(f"hashes must be N x {HASH_BYTES} bytes, not {hashes.shape}")
        self.hashes = hashes

    def __len__(self) -> int:
        return len(self.hashes)

    def within(self, queries: np.ndarray, max_distance: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query (row of M x 32): the rows of the stored hashes at most `max_distance` bits from it and
        their distances, nearest first (ties by row)."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        found: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in queries]
        for start in range(0, len(self.hashes), _ROWS_PER_PASS):
            distances = hamming_distances(queries, self.hashes[start : start + _ROWS_PER_PASS])
            for (rows, kept), row_distances in zip(found, distances):
                close = np.flatnonzero(row_distances <= max_distance)
                rows.append(close + start)
                kept.append(row_distances[close])
        return [_nearest_first(np.concatenate(rows or [np.zeros(0, np.int64)]),
                               np.concatenate(kept or [np.zeros(0, np.int32)])) for rows, kept in found]


def _nearest_first(rows: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, distances))
    return rows[order].astype(np.int64), distances[order].astype(np.int32)
