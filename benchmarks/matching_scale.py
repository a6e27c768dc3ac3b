"""How fast known-item matching by PDQ finds a photo among 10,000 to 1,000,000 stored hashes, and at what memory.

    python benchmarks/matching_scale.py [--photos 200] [--real 1000] [--reference 10] [--sizes N...] [--faiss]

A photo is queried as the index queries it: its 16 PDQ hashes (the dihedral variants of it and of its mirror) at PDQ's
match distance (31), so "per photo" is one `HashSearch.within` of 16 queries. Each size's set is uniform random hashes,
plus the PDQ hashes (8 dihedral variants each) of `--real` shared photos when pdqhash and ../shared/data are here (real
PDQ words are skewed: flat and striped photos share values such as 0x3333), plus two planted near-duplicates of each
query photo's hashes, 0 to 31 bits away (31 included), so that every photo has matches to find. Each size runs in a
fresh process, so its peak RSS is its own.

Prints per size: the build time, p50 and p99 per photo, the process's peak RSS, whether every planted duplicate was
found, agreement with the exact scan (`scan_within`) on `--reference` photos and the scan's own time in the same
process, and the time of one photo matching a cluster of near-identical stored hashes (1 % of the set within 4 bits
of one hash: the worst case that is not a scan). Then half the real photos' hashes searched with the other half's,
against as many uniform hashes (the cost of PDQ's skew), and what holding 1,000,000 items costs before any search:
ids (int64) and PDQ (32 bytes) read from SQLite into numpy. `--faiss` also times faiss-cpu's `IndexBinaryFlat` and
`IndexBinaryMultiHash` (one thread) on the same photos, the alternatives `HashSearch` was chosen over.

The figures of 2026-12-07 on the 2-core machine are in docs/benchmarks.md ("Matching a million PDQ hashes"); at
1,000,000 hashes: build 0.3 s, p50 1.7 ms a photo, p99 2.4 ms, peak RSS 185 MiB, every planted duplicate found.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import random
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from wildvision.hash_search import HashSearch, scan_within  # noqa: E402
from wildvision.hashing import HASH_BYTES, PDQ_MATCH_DISTANCE, pdq_available  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
VARIANTS = 16  # PDQ hashes a photo is queried with: the dihedral variants of it and of its mirror
PLANTED_PER_PHOTO = 2
CLUSTER_SHARE = 0.01  # of the set: near-identical hashes, within CLUSTER_BITS of one hash
CLUSTER_BITS = 4
READ_BLOCK = 65_536  # SQLite rows turned into numpy at a time
MiB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="query photos timed per size")
    parser.add_argument("--real", type=int, default=1000, help="shared photos whose PDQ hashes join each set (0: none)")
    parser.add_argument("--reference", type=int, default=10, help="photos also answered by the exact scan")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="stored hashes per set")
    parser.add_argument("--faiss", action="store_true", help="also time faiss-cpu's binary indexes")
    args = parser.parse_args(argv)
    real = real_hashes(args.real)
    stored_real = "" if real is None else f" and {len(real)} shared photos x {VARIANTS} PDQ variants"
    print(f"random hashes{stored_real}; "
          f"{args.photos} photos x {VARIANTS} queries at distance {PDQ_MATCH_DISTANCE}")
    spawn = multiprocessing.get_context("spawn")  # a fresh process per measurement: ru_maxrss is then its own
    for size in args.sizes:
        with spawn.Pool(1) as pool:
            print(pool.apply(measure_size, (size, real, args.photos, args.reference, args.faiss)), flush=True)
    if real is not None:
        with spawn.Pool(1) as pool:
            print(pool.apply(measure_skew, (real, args.photos)), flush=True)
    with spawn.Pool(1) as pool:
        print(pool.apply(measure_holding, (SIZES[-1],)), flush=True)
    return 0


def real_hashes(photos: int) -> np.ndarray | None:
    """PDQ hashes (photos x 16 x 32) of shared photos, or None without pdqhash or the shared data."""
    if not photos:
        return None
    if not pdq_available() or not SHARED.is_dir():
        print("no shared photos' PDQ hashes (needs pdqhash and ../shared/data): random hashes only", file=sys.stderr)
        return None
    from wildvision.hashing import pdq_hashes
    from wildvision.images import load_image

    files = [folder / row["path"] for folder in (SHARED / "wildlife-products-v1", SHARED / "everyday-v1")
             for row in csv.DictReader((folder / "manifest.csv").open(encoding="utf-8"))]
    random.Random(0).shuffle(files)
    return np.stack([pdq_hashes(load_image(path), with_mirror=True).hashes for path in files[:photos]])


def measure_size(size: int, real: np.ndarray | None, photos: int, reference: int, with_faiss: bool) -> str:
    rng = np.random.default_rng(size)
    test_set = _test_set(rng, size, real, photos)
    stored, queries = test_set.stored, test_set.queries
    started = time.perf_counter()
    search = HashSearch(stored)
    build = time.perf_counter() - started
    times, cpu, results = _timed(lambda photo: search.within(photo, PDQ_MATCH_DISTANCE), queries)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    found = sum(int(row) in np.concatenate([rows for rows, _ in results[photo]])
                for row, photo in zip(test_set.planted_rows, test_set.planted_by))
    cluster_photo = np.concatenate([test_set.cluster_centre[None], queries[0, 1:]])[None]
    cluster_time, _, [cluster_matches] = _timed(lambda photo: search.within(photo, PDQ_MATCH_DISTANCE), cluster_photo)
    cluster_rows, _ = cluster_matches[0]  # the centre's own query
    scan_times, _, scanned = _timed(lambda photo: scan_within(stored, photo, PDQ_MATCH_DISTANCE), queries[:reference])
    agree = sum(_same(mine, theirs) for mine, theirs in zip(results, scanned))
    p50, scan_p50 = np.percentile(times, 50), np.percentile(scan_times, 50)
    lines = [f"{size:>9,} hashes: build {build:.2f} s; per photo p50 {p50 * 1e3:.2f} ms, "
             f"p99 {np.percentile(times, 99) * 1e3:.2f} ms (CPU p50 {np.percentile(cpu, 50) * 1e3:.2f} ms, "
             f"p99 {np.percentile(cpu, 99) * 1e3:.2f} ms); peak RSS {peak / MiB:.0f} MiB; "
             f"planted duplicates found {found}/{len(test_set.planted_rows)}",
             f"          exact scan: {agree}/{reference} photos agree; scan p50 {scan_p50 * 1e3:.1f} ms a photo, "
             f"{scan_p50 / p50:.0f}x the search's",
             f"          a photo within {CLUSTER_BITS} bits of {test_set.cluster_size:,} near-identical stored hashes: "
             f"{cluster_time[0] * 1e3:.1f} ms, {len(cluster_rows):,} matches"]
    if with_faiss:
        lines += _faiss_lines(stored, queries, results, p50)
    return "\n".join(lines)


def measure_skew(real: np.ndarray, photos: int) -> str:
    """Half the real photos' hashes searched with the other half's, against as many uniform hashes: what PDQ's skewed
    words cost the lookups."""
    rng = np.random.default_rng(1)
    held_out = min(photos, len(real) // 2)
    queries, stored = real[:held_out], _stored(real[held_out:])
    search_real = HashSearch(stored)
    search_uniform = HashSearch(rng.integers(0, 256, stored.shape, dtype=np.uint8))
    real_times, _, _ = _timed(lambda photo: search_real.within(photo, PDQ_MATCH_DISTANCE), queries)
    uniform_times, _, _ = _timed(lambda photo: search_uniform.within(photo, PDQ_MATCH_DISTANCE),
                                 rng.integers(0, 256, queries.shape, dtype=np.uint8))
    real_p50, uniform_p50 = np.percentile(real_times, 50), np.percentile(uniform_times, 50)
    load = _lookup_load(stored, queries.reshape(-1, HASH_BYTES))
    return (f"PDQ's skew: {len(stored):,} real hashes searched with {held_out} other photos p50 {real_p50 * 1e3:.2f} "
            f"ms, p99 {np.percentile(real_times, 99) * 1e3:.2f} ms; as many uniform hashes p50 "
            f"{uniform_p50 * 1e3:.2f} ms ({real_p50 / uniform_p50:.1f}x). Rows looked up per real query, to a uniform "
            f"set's: mean {load.mean():.1f}x, p99 {np.percentile(load, 99):.1f}x")


def _lookup_load(stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query, the rows that its 16 words and their one-bit neighbours find in `stored` (a row once per word),
    divided by what as many uniform hashes would give: how much PDQ's skew multiplies the search's work."""
    neighbours = np.array([0] + [1 << bit for bit in range(16)], np.uint16)
    stored_words, query_words = stored.view(np.uint16), queries.view(np.uint16)
    found = sum(np.bincount(stored_words[:, word], minlength=1 << 16)[query_words[:, word, None] ^ neighbours].sum(1)
                for word in range(16))
    return found / (len(stored) * 16 * len(neighbours) / (1 << 16))


def measure_holding(size: int) -> str:
    """Ids (int64) and PDQ (32 bytes) of `size` items read from SQLite into numpy, as an index loads them; then the
    search built on them. The table is a stand-in for the index's own."""
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as scratch:
        connection = sqlite3.connect(Path(scratch) / "items.sqlite")
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, pdq BLOB NOT NULL)")
        hashes = rng.integers(0, 256, (size, HASH_BYTES), dtype=np.uint8)
        connection.executemany("INSERT INTO items VALUES (?, ?)", ((n, hashes[n].tobytes()) for n in range(size)))
        connection.commit()
        del hashes
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        ids, pdq = _read_items(connection)
        loaded = time.perf_counter() - started
        search = HashSearch(pdq)
        built = time.perf_counter() - started - loaded
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        connection.close()
    return (f"holding {size:,} items: ids + PDQ {(ids.nbytes + pdq.nbytes) / MiB:.0f} MiB in numpy, read from SQLite "
            f"in {loaded:.1f} s; a search of its {len(search):,} hashes built in {built:.2f} s; peak RSS "
            f"{before / MiB:.0f} MiB before reading, {peak / MiB:.0f} MiB after")


def _read_items(connection: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """Every item's id and PDQ, a block of rows at a time: `fetchall` would hold a million Python tuples at once
    (about 170 MiB more at the peak, measured)."""
    count = connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    ids, pdq = np.empty(count, np.int64), np.empty((count, HASH_BYTES), np.uint8)
    cursor = connection.execute("SELECT id, pdq FROM items ORDER BY id")
    start = 0
    while block := cursor.fetchmany(READ_BLOCK):
        end = start + len(block)
        ids[start:end] = [row[0] for row in block]
        pdq[start:end] = np.frombuffer(b"".join(row[1] for row in block), np.uint8).reshape(-1, HASH_BYTES)
        start = end
    return ids, pdq


@dataclass(frozen=True)
class SearchSet:
    stored: np.ndarray  # size x 32, shuffled
    queries: np.ndarray  # photos x 16 x 32
    planted_rows: np.ndarray  # stored rows that are near-duplicates of a query photo's hashes
    planted_by: np.ndarray  # the photo each is near
    cluster_centre: np.ndarray  # 32 bytes that cluster_size stored hashes lie within CLUSTER_BITS of
    cluster_size: int


def _test_set(rng: np.random.Generator, size: int, real: np.ndarray | None, photos: int) -> SearchSet:
    queries, stored_real = _query_photos(rng, real, photos)
    planted, planted_by = _planted(rng, queries)
    cluster_centre = rng.integers(0, 256, HASH_BYTES, dtype=np.uint8)
    cluster = _flipped(rng, np.repeat(cluster_centre[None], round(size * CLUSTER_SHARE), axis=0), CLUSTER_BITS)
    known = np.concatenate([planted, cluster, stored_real])
    stored = np.concatenate([rng.integers(0, 256, (size - len(known), HASH_BYTES), dtype=np.uint8), known])
    order = rng.permutation(size)  # planted rows anywhere, not at the end
    planted_rows = np.argsort(order)[size - len(known) + np.arange(len(planted))]  # where the shuffle put them
    return SearchSet(stored[order], queries, planted_rows, planted_by, cluster_centre, len(cluster))


def _query_photos(rng: np.random.Generator, real: np.ndarray | None, photos: int) -> tuple[np.ndarray, np.ndarray]:
    """The query photos' hashes (photos x 16 x 32) and the real hashes to store (those of the other real photos)."""
    if real is None:
        return rng.integers(0, 256, (photos, VARIANTS, HASH_BYTES), dtype=np.uint8), np.zeros((0, HASH_BYTES), np.uint8)
    chosen = rng.permutation(len(real))
    queries = real[chosen[:photos]]
    if len(queries) < photos:  # fewer real photos than queries: the rest random
        queries = np.concatenate([queries, rng.integers(0, 256, (photos - len(queries), VARIANTS, HASH_BYTES),
                                                        dtype=np.uint8)])
    return queries, _stored(real[chosen[photos:]])


def _stored(real: np.ndarray) -> np.ndarray:
    """Real photos' hashes to store: the dihedral variants of each (the first 8 of its 16), as skewed as stored hashes
    and no more of them than the smallest set holds."""
    return real[:, :8].reshape(-1, HASH_BYTES)


def _planted(rng: np.random.Generator, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicates of random variants of each query photo, 0 to 31 bits away in turn, and the photo of each."""
    photo = np.repeat(np.arange(len(queries)), PLANTED_PER_PHOTO)
    variant = rng.integers(0, VARIANTS, len(photo))
    bits = np.arange(len(photo)) % (PDQ_MATCH_DISTANCE + 1)
    return np.stack([_flipped(rng, queries[p, v][None], int(b))[0] for p, v, b in zip(photo, variant, bits)]), photo


def _flipped(rng: np.random.Generator, hashes: np.ndarray, bits: int) -> np.ndarray:
    """Each hash with `bits` of its 256 bits flipped (different bits for each)."""
    unpacked = np.unpackbits(hashes, axis=1)
    for row in unpacked:
        row[rng.choice(8 * HASH_BYTES, bits, replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)


def _timed(search: Callable[[np.ndarray], Any], photos: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Wall and CPU seconds per photo, and the answers. Wall time includes waiting for a core, which the machine's
    other work makes long now and then: the CPU time shows what the search itself costs."""
    times, cpu, results = [], [], []
    for photo in photos:
        started, started_cpu = time.perf_counter(), time.thread_time()
        results.append(search(photo))
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return np.array(times), np.array(cpu), results


def _same(mine: list[tuple[np.ndarray, np.ndarray]], theirs: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    return all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(mine, theirs, strict=True))


def _faiss_lines(stored: np.ndarray, queries: np.ndarray, results: list, p50: float) -> list[str]:
    try:
        import faiss
    except ImportError:
        return ["          faiss-cpu is not installed: pip install faiss-cpu"]
    faiss.omp_set_num_threads(1)  # two threads contending with the machine's other work were 3-4x slower
    lines = []
    for name, make in (("IndexBinaryFlat", lambda: faiss.IndexBinaryFlat(8 * HASH_BYTES)),
                       ("IndexBinaryMultiHash(16 x 16 bits, nflip 1)", lambda: _multi_hash(faiss))):
        started = time.perf_counter()
        index = make()
        index.add(stored)
        build = time.perf_counter() - started
        sample = queries[:20]
        # faiss's range search keeps distances below the radius: radius 32 is distance <= 31
        times, _, answers = _timed(lambda photo: index.range_search(photo, PDQ_MATCH_DISTANCE + 1), sample)
        agree = sum(_faiss_agrees(answer, mine) for answer, mine in zip(answers, results))
        lines.append(f"          faiss {name}: build {build:.2f} s, p50 {np.percentile(times, 50) * 1e3:.1f} ms "
                     f"a photo ({np.percentile(times, 50) / p50:.1f}x the search's); {agree}/{len(sample)} agree")
    return lines


def _multi_hash(faiss: ModuleType) -> Any:
    index = faiss.IndexBinaryMultiHash(8 * HASH_BYTES, 16, 16)
    index.nflip = 1  # pigeonhole: within 31 bits, one of the 16 words is within 1 bit
    return index


def _faiss_agrees(answer: tuple[np.ndarray, np.ndarray, np.ndarray], mine: list) -> bool:
    limits, _, labels = answer
    return all(set(labels[limits[query] : limits[query + 1]].tolist()) == set(rows.tolist())
               for query, (rows, _) in enumerate(mine))


if __name__ == "__main__":
    sys.exit(main())
