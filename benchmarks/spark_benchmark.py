"""`wildvision spark` in local mode against `wildvision scan` on one machine: throughput, per-photo overhead, startup.

    python benchmarks/spark_benchmark.py [--photos 1000] [--archive DIR] [--model M.onnx] [--master local[2]]
                                         [--partitions N]

Builds (or reuses) the archive of `scan_benchmark.py` (phone-sized JPEGs of 1,000-2,000 px, 1 in 50 truncated), then
runs each command twice over the whole archive in one fresh process, as a user runs it, into a new Parquet output:
  scan    wildvision scan --files-from LIST -o records.parquet
  spark   wildvision spark ARCHIVE -o records.parquet --master local[2] [--partitions N]
The first run, timed from the process's start, is what a user waits for; the second finds everything started and
warm (for Spark: the JVM and its compiled code, the Python workers and their loaded model), so it gives the
throughput a long run settles at. Fixed cost = first run - second run. Both commands run in the same run of this
script, since these machines are shared and absolute speeds drift: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scan_benchmark import build_archive

REPO = Path(__file__).resolve().parent.parent
# Runs in a fresh process: prints the seconds of the first run (counted from before importing wildvision) and of the
# second, each into a new output.
_PROBE = """
import sys, time
started = time.monotonic()
from wildvision.cli import main
arguments = sys.argv[1:]
times = []
for run in ("first", "second"):
    assert main([a.replace("{run}", run) for a in arguments]) == 0
    times.append(time.monotonic() - started)
    started = time.monotonic()
print(*times)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--archive", type=Path, help="reuse or create the archive here (default: a temporary folder)")
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--partitions", type=int, help="Spark tasks (default: Spark's split, about 30 photos a task)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        archive = args.archive or Path(scratch) / "archive"
        photos = build_archive(archive, args.photos)
        size = sum(path.stat().st_size for path in photos) / len(photos) / 1024
        print(f"archive: {len(photos)} JPEGs in {archive}, {size:.0f} KiB on average; "
              f"load average before: {os.getloadavg()[0]:.2f}")
        listing = Path(scratch) / "photos.txt"
        listing.write_text("".join(f"{path}\n" for path in photos))
        model = ["--model", str(args.model)] if args.model else []
        scan = time_twice([*model, "scan", "--files-from", str(listing), "-o", f"{scratch}/scan-{{run}}.parquet"])
        partitions = ["--partitions", str(args.partitions)] if args.partitions else []
        spark = time_twice([*model, "spark", str(archive), "-o", f"{scratch}/spark-{{run}}.parquet",
                            "--master", args.master, *partitions])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    count, cores = len(photos), os.cpu_count() or 1
    for name, (first, second) in (("scan", scan), ("spark", spark)):
        print(f"{name:5}  first run {first:5.1f} s ({count / first:5.1f} photos/s end to end)   "
              f"warm {second:5.1f} s ({count / second:5.1f} photos/s, {second / count * 1000:.1f} ms a photo)   "
              f"fixed {first - second:4.1f} s")
    print(f"spark / scan warm throughput = {scan[1] / spark[1]:.2f}")
    print(f"spark overhead: {(spark[1] - scan[1]) / count * 1000:+.1f} ms a photo, "
          f"{(spark[0] - spark[1]) - (scan[0] - scan[1]):+.1f} s fixed (JVM start and warm-up, Python workers, model)")
    print(f"spark per core ({args.master}, {cores} cores here): {count / spark[1] / cores:.2f} photos/s warm")
    return 0


def time_twice(arguments: list[str]) -> tuple[float, float]:
    """Seconds of a `wildvision` command's first and second run in one fresh process."""
    # Spark's Python workers import wildvision from this checkout, as this script does.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _PROBE, *arguments], cwd=REPO, env=environment, check=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first, second = map(float, result.stdout.split()[-2:])
    return first, second


if __name__ == "__main__":
    sys.exit(main())
