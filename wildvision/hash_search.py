"""Which of many stored 256-bit hashes lie within a Hamming distance of a query: the search behind known-item
matching by PDQ.

`HashSearch` is exact: every stored hash within the distance is found, as comparing every stored hash would find
it (`scan_within`, kept as the reference the tests hold the index to). It is multi-index hashing (Norouzi et al.,
2012) on the sixteen 16-bit words of a hash: if two hashes differ in at most d bits, then by pigeonhole at least one of
their 16 words differs in at most d // 16 bits, so looking up each query word's own value and its neighbours within
d // 16 bits in a table per word position finds every candidate, which is then checked by its full distance. At
PDQ's match distance (31) that is 17 lookups per word; a uniform 16-bit word shares its value with N / 65,536 of the
stored hashes, so a query reads about 0.4 % of them instead of all.

Measured by `benchmarks/matching_scale.py` on the 2-core machine (docs/benchmarks.md), 1,000,000 stored hashes, a
photo's 16 queries (the dihedral variants of it and of its mirror) at distance 31: p50 1.7 ms a photo (p99 2.4 ms),
built in 0.3 s, 72 MB beside the 32 MB of hashes; scanning every hash takes 140 ms. Chosen over faiss-cpu, measured
in the same runs with one thread (two, contending with the machine's other work, were 3-4 times slower):
`IndexBinaryFlat.range_search` scans every hash, 18 ms a photo; `IndexBinaryMultiHash` (the same idea, with hash
maps) 27 ms a photo, 4-7 s to build and 300 MB more. This needs numpy alone, so the core
install has it: no extra, and no 66 MB wheel.

Real PDQ words are not uniform: flat and striped photos share values such as 0x3333 (in the shared photos' hashes,
up to 125 times a uniform word's share). 73,520 hashes of 9,190 of them, looked up by 1,000 others' hashes, give 1.6
times the candidates that as many uniform hashes give (p99 4.0 times), so a million real hashes should cost about 2 ms
a photo. A photo that matches many stored hashes pays for each: one within 4 bits of 10,000 near-identical ones takes
8-12 ms. A query whose lookups would find more than half as many rows as are stored (counting a row once per
word) is scanned instead, so none costs much more than a scan; a distance of 48 or more (three flipped bits a word,
17 % of every table) is always scanned.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from wildvision.hashing import HASH_BYTES

__all__ = ["HashSearch", "scan_within"]

_ROWS_PER_PASS = 65_536  # stored hashes compared per step of a scan: bounds its 2 MB temporary
_QUERIES_PER_PASS = 64  # queries looked up together: bounds the candidates' temporary (about 4,000 a query at 1M)
_WORDS = 16  # 16-bit words of a 256-bit hash
_WORD_VALUES = 1 << 16
# A query whose lookups find more than this share of the stored rows (counting a row once per word) is scanned
# instead: checking a looked-up row costs about twice what a scan pays for one (at 1M: 60 ns against 25 ns).
_SCANNED_FROM = 0.5
_MAX_FLIPS = 2  # bits flipped per word by lookups (distance < 48); beyond, the lookups read more than a scan
# numpy >= 2.0 counts a uint64's bits in one instruction (33,000 candidates, a photo's at 1M: 0.1 ms, against 2 ms
# by a byte table); the core install allows numpy 1.24, which unpacks the bits instead (1M: 3.9 ms a photo, not 1.3).
_bit_count = getattr(np, "bitwise_count", None)

Matches = tuple[np.ndarray, np.ndarray]  # rows (int64) and their distances (int32), nearest first, ties by row


class HashSearch:
    """A fixed set of N hashes (N x 32 uint8), searched by Hamming distance; safe to share across threads.

    Building it sorts each word position's values once (1,000,000 hashes: 0.3-0.7 s, and 72 MB beside their 32 MB).
    """

    def __init__(self, hashes: np.ndarray) -> None:
        hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
        if hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
            raise ValueError(f"hashes must be N x {HASH_BYTES} bytes, not {hashes.shape}")
        self.hashes = hashes
        # Per word position: the stored rows ordered by that word's value (int32: 2**31 hashes would be 64 GB),
        # and where each value's rows start in that order.
        self._rows_by_word = np.empty((_WORDS, len(hashes)), np.int32)
        self._value_starts = np.zeros((_WORDS, _WORD_VALUES + 1), np.int64)
        for word, values in enumerate(_words(hashes).T):
            self._rows_by_word[word] = np.argsort(values, kind="stable")
            np.cumsum(np.bincount(values, minlength=_WORD_VALUES), out=self._value_starts[word, 1:])

    def __len__(self) -> int:
        return len(self.hashes)

    def within(self, queries: np.ndarray, max_distance: int) -> list[Matches]:
        """For each query (row of M x 32): the rows of the stored hashes at most `max_distance` bits from it and
        their distances, nearest first (ties by row)."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        flips = max_distance // _WORDS
        if flips > _MAX_FLIPS:
            return scan_within(self.hashes, queries, max_distance)
        masks = _flip_masks(flips) if max_distance >= 0 else np.zeros(0, np.uint16)
        found: list[Matches] = []
        for start in range(0, len(queries), _QUERIES_PER_PASS):
            found.extend(self._looked_up(queries[start : start + _QUERIES_PER_PASS], masks, max_distance))
        return found

    def _looked_up(self, queries: np.ndarray, masks: np.ndarray, max_distance: int) -> list[Matches]:
        """`within` for a few queries, by the word tables; a query with too many candidates is scanned."""
        rows, bounds, scanned = self._candidates(queries, masks)
        # np.take rather than indexing: five times faster at gathering rows scattered through 32 MB (measured)
        differing = np.take(_lanes(self.hashes), rows, axis=0)
        for query, low, high in zip(_lanes(queries), bounds[:-1], bounds[1:]):
            differing[low:high] ^= query
        distances = _bit_counts(differing)
        close = np.flatnonzero(distances <= max_distance)
        owner = np.searchsorted(bounds, close, side="right") - 1
        found = _grouped(owner, rows[close], distances[close], len(queries), len(self.hashes))
        for index in np.flatnonzero(scanned):
            found[index] = scan_within(self.hashes, queries[index : index + 1], max_distance)[0]
        return found

    def _candidates(self, queries: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored rows whose word at some position is a query's word there XOR a mask: query 0's from
        bounds[0] to bounds[1], and so on, a row once for each word that finds it. Queries that would find more
        rows than a scan reads are flagged in `scanned` and find none here."""
        # query x word x probe: the word values looked up (as intp: value + 1 below must not wrap at 65,535)
        probed = (_words(queries)[:, :, None] ^ masks).astype(np.intp)
        word = np.arange(_WORDS)[None, :, None]
        starts = self._value_starts[word, probed]
        lengths = self._value_starts[word, probed + 1] - starts
        scanned = lengths.sum(axis=(1, 2)) > _SCANNED_FROM * len(self.hashes)
        lengths[scanned] = 0
        bounds = np.concatenate([[0], np.cumsum(lengths.sum(axis=(1, 2)))])
        table_starts = starts + word * len(self.hashes)  # in the sixteen tables laid end to end
        return np.take(self._rows_by_word, _concatenated_ranges(table_starts.ravel(), lengths.ravel())), bounds, scanned


def scan_within(hashes: np.ndarray, queries: np.ndarray, max_distance: int) -> list[Matches]:
    """`HashSearch.within` by comparing every stored hash (N x 32): the reference, and the answer for far distances
    and for queries that would look up more rows than a scan reads."""
    lanes = _lanes(np.ascontiguousarray(hashes, dtype=np.uint8))
    query_lanes = _lanes(np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES))
    found: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in query_lanes]
    for start in range(0, len(lanes), _ROWS_PER_PASS):
        block = lanes[start : start + _ROWS_PER_PASS]
        for query, (rows, kept) in zip(query_lanes, found):
            distances = _bit_counts(block ^ query)
            close = np.flatnonzero(distances <= max_distance)
            rows.append(close + start)
            kept.append(distances[close])
    return [_nearest_first(np.concatenate(rows or [np.zeros(0, np.int64)]),
                           np.concatenate(kept or [np.zeros(0, np.int32)])) for rows, kept in found]


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The integers of ranges [start, start + length), one range after another."""
    output_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - output_starts, lengths) + np.arange(lengths.sum())


def _words(hashes: np.ndarray) -> np.ndarray:
    """N x 16 uint16: a hash's bytes two at a time (any fixed pairing serves: a flipped bit is a flipped bit)."""
    return hashes.view(np.uint16)


def _flip_masks(flips: int) -> np.ndarray:
    """Every 16-bit mask with at most `flips` bits set, 0 (the word's own value) first."""
    return np.array([sum(1 << bit for bit in bits) for count in range(flips + 1)
                     for bits in combinations(range(_WORDS), count)], dtype=np.uint16)


def _lanes(hashes: np.ndarray) -> np.ndarray:
    """N x 4 uint64: a hash as four 64-bit lanes, so that a distance is four popcounts."""
    return hashes.view(np.uint64)


def _bit_counts(lanes: np.ndarray) -> np.ndarray:
    """Set bits of each row of K x 4 lanes, as K int32."""
    if _bit_count is None:
        return np.unpackbits(lanes.view(np.uint8), axis=1).sum(axis=1, dtype=np.int32)
    counts = _bit_count(lanes)
    # Four columns added by hand: numpy's reduction along a row of four costs ten times the popcounts.
    return counts[:, 0].astype(np.int32) + counts[:, 1] + counts[:, 2] + counts[:, 3]


def _grouped(owner: np.ndarray, rows: np.ndarray, distances: np.ndarray, queries: int, stored: int
             ) -> list[Matches]:
    """Each query's matches once each (a row found by several words is kept once), nearest first."""
    _, first = np.unique(owner.astype(np.int64) * stored + rows, return_index=True)
    owner, rows, distances = owner[first], rows[first], distances[first]
    order = np.lexsort((rows, distances, owner))
    bounds = np.searchsorted(owner[order], np.arange(queries + 1))
    return [(rows[order[low:high]].astype(np.int64), distances[order[low:high]].astype(np.int32))
            for low, high in zip(bounds[:-1], bounds[1:])]


def _nearest_first(rows: np.ndarray, distances: np.ndarray) -> Matches:
    order = np.lexsort((rows, distances))
    return rows[order].astype(np.int64), distances[order].astype(np.int32)
