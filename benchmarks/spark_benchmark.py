"""`wildvision spark` in local mode and on a standalone cluster against `wildvision scan` on one machine: throughput,
per-photo overhead, startup.

    python benchmarks/spark_benchmark.py [--photos 1000] [--archive DIR] [--model M.onnx] [--master local[2]]
                                         [--partitions N] [--workers 2]

Builds (or reuses) the archive of `scan_benchmark.py` (phone-sized JPEGs of 1,000-2,000 px, 1 in 50 truncated), then
runs each command twice over the whole archive in one fresh process, as a user runs it, into a new Parquet output:
  scan     wildvision scan --files-from LIST -o records.parquet
  spark    wildvision spark ARCHIVE -o records.parquet --master local[2] [--partitions N]
  cluster  the same through spark-submit, on a standalone master and --workers workers of one core each on loopback
           (each a process of its own, started with the `spark-class` script pyspark ships): executors in JVMs and
           Python workers of their own, the model shipped to them by the command
The first run, timed from the process's start, is what a user waits for; the second finds everything started and
warm (for Spark: the JVM and its compiled code, the Python workers and their loaded model), so it gives the
throughput a long run settles at. Fixed cost = first run - second run. Both commands run in the same run of this
script, since these machines are shared and absolute speeds drift: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pyspark

from scan_benchmark import build_archive

REPO = Path(__file__).resolve().parent.parent
SPARK_BIN = Path(pyspark.__file__).parent / "bin"
# Spark's processes find this checkout and this interpreter, as the command's own do.
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
               "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m"}
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
    parser.add_argument("--workers", type=int, default=2, help="standalone workers, one core and 1 GiB each")
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
        with standalone_cluster(args.workers, Path(scratch)) as master:
            submit = [str(SPARK_BIN / "spark-submit"), "--master", master, "--conf", "spark.executor.cores=1",
                      "--conf", "spark.executor.memory=512m", "--conf", "spark.ui.enabled=false"]
            cluster = time_twice([*model, "spark", str(archive), "-o", f"{scratch}/cluster-{{run}}.parquet", *partitions],
                                 launcher=submit, probe=Path(scratch) / "probe.py")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    count, cores = len(photos), os.cpu_count() or 1
    runs = {"scan": scan, f"spark {args.master}": spark, f"cluster {args.workers}x1": cluster}
    for name, (first, second) in runs.items():
        print(f"{name:14}  first run {first:5.1f} s ({count / first:5.1f} photos/s end to end)   "
              f"warm {second:5.1f} s ({count / second:5.1f} photos/s, {second / count * 1000:.1f} ms a photo)   "
              f"fixed {first - second:4.1f} s   warm throughput / scan's = {scan[1] / second:.2f}")
    print(f"spark overhead: {(spark[1] - scan[1]) / count * 1000:+.1f} ms a photo, "
          f"{(spark[0] - spark[1]) - (scan[0] - scan[1]):+.1f} s fixed (JVM start and warm-up, Python workers, model)")
    print(f"cluster / local warm throughput = {spark[1] / cluster[1]:.2f} "
          f"(the same {cores} cores here, but executor JVMs of their own and the driver's JVM beside them)")
    print(f"spark per core ({args.master}, {cores} cores here): {count / spark[1] / cores:.2f} photos/s warm")
    return 0


@contextmanager
def standalone_cluster(workers: int, scratch: Path) -> Iterator[str]:
    """A standalone master and `workers` workers (one core, 1 GiB each) on loopback; yields the master's URL."""
    port, web_port = _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    daemons = [["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                "--webui-port", str(web_port)]]
    daemons += [["org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1", "--cores", "1", "--memory",
                 "1g", "--webui-port", str(_free_port()), "--work-dir", str(scratch / f"work-{n}")] for n in range(workers)]
    with ExitStack() as stack:
        for daemon in daemons:
            process = subprocess.Popen([str(SPARK_BIN / "spark-class"), *daemon], env=ENVIRONMENT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            stack.callback(_kill, process)
        while _alive_workers(web_port) < workers:
            time.sleep(0.2)
        yield master


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the daemon, and the executors and Python workers it started
    process.wait()


def _alive_workers(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as answer:
            return json.load(answer)["aliveworkers"]
    except OSError:  # the master is not listening yet
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def time_twice(arguments: list[str], *, launcher: list[str] | None = None, probe: Path | None = None) -> tuple[float, float]:
    """Seconds of a `wildvision` command's first and second run in one fresh process: this interpreter's, or the
    driver that `launcher` (spark-submit and its options) starts on `probe`, a file (spark-submit runs files)."""
    if launcher is None:
        command = [sys.executable, "-c", _PROBE]
    else:
        probe.write_text(_PROBE)
        command = [*launcher, str(probe)]
    result = subprocess.run([*command, *arguments], cwd=REPO, env=ENVIRONMENT, check=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first, second = map(float, result.stdout.split()[-2:])
    return first, second


if __name__ == "__main__":
    sys.exit(main())
