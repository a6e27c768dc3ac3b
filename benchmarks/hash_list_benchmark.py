"""What a large imported hash list costs: importing it, loading it for matching, and the matching process's memory.

    python benchmarks/hash_list_benchmark.py [--items 1000000] [--model M.onnx]

Writes a hash list of `--items` random PDQ hashes (ThreatExchange's CSV, as `wildvision index export` writes it),
imports it into a fresh index (one transaction), opens the index with the model as `scan --match-index` does, matches
a few PDQ queries, and prints the import time, the first match's load time, the time per match and the process's
peak memory (RSS: the model, the items in numpy and the search together). The search itself is
`wildvision.hash_search.HashSearch`, whose speed `benchmarks/matching_benchmark.py` measures.
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wildvision import Classifier  # noqa: E402
from wildvision.hashing import pdq_hex  # noqa: E402
from wildvision.known_items import COLUMNS, KnownItemIndex, import_hash_list  # noqa: E402


def write_list(path: Path, items: int, rng: np.random.Generator) -> None:
    hashes = rng.integers(0, 256, (items, 32), dtype=np.uint8)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for number, row in enumerate(hashes):
            writer.writerow(("pdq", pdq_hex(row), "coalition", "POSITIVE_CLASS", "ivory", f"item-{number}",
                             "2026-01-01T00:00:00+00:00", "", 90))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def match_in_this_process(path: Path, model: Path | None, queries: int) -> None:
    """Open the index as a scan does and match: run in a fresh process, so its peak memory is matching's alone."""
    classifier = Classifier(model) if model else Classifier()
    print(f"model loaded: peak RSS {peak_rss_mb():.0f} MB")
    index = KnownItemIndex(path, classifier)
    found = np.random.default_rng(1).integers(0, 256, (queries, 16, 32), dtype=np.uint8)  # a photo's PDQ variants
    nothing = np.zeros((1, 32), np.uint8), np.zeros((1, 1), np.float32)  # an index of PDQ-only items uses neither
    started = time.perf_counter()
    index.match_features(*nothing, found[:1], np.array([100]))
    print(f"first match (loads {len(index):,} items): {time.perf_counter() - started:.1f} s")
    times = []
    for query in found:
        started = time.perf_counter()
        index.match_features(*nothing, query[np.newaxis], np.array([100]))
        times.append(time.perf_counter() - started)
    print(f"match (16 PDQ variants): median {1000 * np.median(times):.0f} ms over {len(times)} queries")
    print(f"peak RSS of the matching process: {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--match-only", type=Path, metavar="INDEX", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.match_only:
        match_in_this_process(args.match_only, args.model, args.queries)
        return
    with tempfile.TemporaryDirectory() as folder:
        hash_list, path = Path(folder) / "list.csv", Path(folder) / "k.sqlite"
        write_list(hash_list, args.items, np.random.default_rng(0))
        index = KnownItemIndex(path, Classifier(args.model) if args.model else Classifier(), create=True)
        started = time.perf_counter()
        imported = import_hash_list(index, hash_list)
        print(f"import of {imported.hashes:,} hashes ({imported.rows:,} items): {time.perf_counter() - started:.1f} s, "
              f"file {path.stat().st_size / 2**20:.0f} MB")
        model = ["--model", str(args.model)] if args.model else []
        subprocess.run([sys.executable, __file__, "--match-only", str(path), "--queries", str(args.queries), *model],
                       check=True)


if __name__ == "__main__":
    main()
