"""`wildvision spark` in local mode against `wildvision scan` on one machine: throughput, per-photo overhead, startup.

    python benchmarks/spark_benchmark.py [--photos 1000] [--archive DIR] [--model M.onnx] [--master local[2]]

Builds (or reuses) the archive of `scan_benchmark.py` (phone-sized JPEGs of 1,000-2,000 px, 1 in 50 truncated), then
times each command end to end in a fresh process, as a user runs it, on a quarter of the archive and on all of it:
  scan    wildvision scan --files-from LIST -o records.parquet
  spark   wildvision spark SOURCE -o records.parquet --master local[2]  (JVM start, listing, tasks, Parquet)
Two sizes separate the fixed cost (the time at zero photos) from the cost per photo: run time = fixed + n x per-photo.
Throughput is 1 / per-photo, what a long run approaches. Both run in the same run of this script, alternating, since
these machines are shared and absolute speeds drift: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scan_benchmark import build_archive

REPO = Path(__file__).resolve().parent.parent
_SELLERS = 40  # build_archive spreads photos over seller00..seller39; seller0* is the first quarter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--archive", type=Path, help="reuse or create the archive here (default: a temporary folder)")
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        archive = args.archive or Path(scratch) / "archive"
        photos = build_archive(archive, args.photos)
        quarter = [path for path in photos if path.parent.name.startswith("seller0")]
        print(f"archive: {len(photos)} JPEGs in {archive}, {sum(p.stat().st_size for p in photos) / len(photos) / 1024:.0f} KiB "
              f"on average; load average before: {os.getloadavg()[0]:.2f}")
        runs = {("scan", len(quarter)): 0.0, ("spark", len(quarter)): 0.0, ("scan", len(photos)): 0.0,
                ("spark", len(photos)): 0.0}
        for command, count in runs:
            subset = count < len(photos)
            files, source = (quarter, f"{archive}/seller0*") if subset else (photos, str(archive))
            runs[command, count] = time_command(command, files, source, Path(scratch), args)
            print(f"{command:5} {count:5} photos: {runs[command, count]:6.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    scan_fixed, scan_per_photo = fit(runs, "scan", len(quarter), len(photos))
    spark_fixed, spark_per_photo = fit(runs, "spark", len(quarter), len(photos))
    cores = os.cpu_count() or 1
    print(f"scan    {1 / scan_per_photo:6.2f} photos/s  ({scan_per_photo * 1000:.1f} ms a photo, {scan_fixed:.1f} s fixed)")
    print(f"spark   {1 / spark_per_photo:6.2f} photos/s  ({spark_per_photo * 1000:.1f} ms a photo, {spark_fixed:.1f} s fixed)")
    print(f"spark / scan throughput = {scan_per_photo / spark_per_photo:.2f}")
    print(f"spark overhead: {(spark_per_photo - scan_per_photo) * 1000:+.1f} ms a photo, "
          f"{spark_fixed - scan_fixed:+.1f} s fixed (JVM start, listing, planning)")
    print(f"end to end on all {len(photos)} photos: scan {len(photos) / runs['scan', len(photos)]:.2f} photos/s, "
          f"spark {len(photos) / runs['spark', len(photos)]:.2f} photos/s")
    print(f"spark per core ({cores} cores): {1 / spark_per_photo / cores:.2f} photos/s")
    return 0


def time_command(command: str, files: list[Path], source: str, scratch: Path, args: argparse.Namespace) -> float:
    """Seconds one `wildvision` command takes in a fresh process, from start to the final output."""
    output = scratch / f"{command}-{len(files)}.parquet"
    model = ["--model", str(args.model)] if args.model else []
    if command == "scan":
        listing = scratch / f"list-{len(files)}.txt"
        listing.write_text("".join(f"{path}\n" for path in files))
        arguments = [*model, "scan", "--files-from", str(listing), "-o", str(output)]
    else:
        arguments = [*model, "spark", source, "-o", str(output), "--master", args.master]
    # The Spark workers import wildvision from this checkout, as this script does.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "wildvision", *arguments], cwd=REPO, env=environment, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def fit(runs: dict[tuple[str, int], float], command: str, small: int, large: int) -> tuple[float, float]:
    """Fixed seconds and seconds per photo from the runs on two archive sizes."""
    per_photo = (runs[command, large] - runs[command, small]) / (large - small)
    return runs[command, small] - small * per_photo, per_photo


if __name__ == "__main__":
    sys.exit(main())
