"""Single-photo latency in-process and through `wildvision serve`, and the service's throughput under concurrent clients.

    python benchmarks/service_benchmark.py [--model M.onnx] [--requests 200] [--clients 1 4 8]
    python benchmarks/service_benchmark.py --load [--burst 64] [--requests 2000] [--clients 16]

Photos are phone-sized JPEGs (listing photos from ../shared/data scaled to 1,600 px, else generated). Measures in
one run: `Classifier.predict(bytes)` latency p50/p99 and the same through the service on loopback (`wildvision serve`
in a subprocess, httpx as the client, one request at a time), alternating in blocks; then photos per second
with N clients each sending one request after another, as a ratio of in-process calls one at a time (from the
latency run). These machines are shared, so compare the ratios rather than the absolute figures.

`--load` instead puts the service under a burst: `--burst` clients each upload a 15 MiB photo at once while
`--clients` clients send `--requests` ordinary photos one after another, a tenth of them bad files; it prints the 5xx
answers (503s apart), p50/p99 latency of the ordinary requests, their throughput as a ratio of in-process scoring one
at a time, and the server's peak RSS (loopback only; bounded by the counts given).
"""

from __future__ import annotations

import argparse
import io
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "wildlife-products-v1" / "images"
_BLOCK = 25  # latency calls in a row before switching between in-process and service
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402  (the [test] extra)

from wildvision import Classifier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--requests", type=int, default=200, help="per latency measurement and per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--load", action="store_true", help="the burst and load run instead of latency/throughput")
    parser.add_argument("--burst", type=int, default=64, help="--load: concurrent 15 MiB uploads")
    args = parser.parse_args(argv)
    photos = listing_jpegs(16)
    classifier = Classifier(args.model)
    if args.load:
        return load(classifier, args.model, photos, args.burst, args.requests, args.clients[0])
    print(f"{len(photos)} JPEGs of {np.mean([len(p) for p in photos]) / 1024:.0f} KiB on average, {args.requests} requests each")
    with serving(args.model) as url, httpx.Client(base_url=url, timeout=60) as client:

        def post(photo: bytes) -> None:
            client.post("/predict", content=photo, headers={"content-type": "image/jpeg"}).raise_for_status()

        local, remote = paired_latencies(classifier.predict, post, photos, args.requests)
        print(f"in-process     p50 {percentile(local, 50):6.1f} ms   p99 {percentile(local, 99):6.1f} ms")
        print(f"service        p50 {percentile(remote, 50):6.1f} ms   p99 {percentile(remote, 99):6.1f} ms   "
              f"(p50 ratio service / in-process {percentile(remote, 50) / percentile(local, 50):.2f})")
        local_rate = 1000 / np.mean(local)
        for clients in args.clients:
            rate = throughput(url, photos, clients, args.requests)
            print(f"{clients} client(s)    {rate:6.1f} photos/s   = {rate / local_rate:.2f}x in-process one at a time")
    return 0


def load(classifier: Classifier, model: Path | None, photos: list[bytes], burst: int, requests: int, clients: int) -> int:
    """The burst and load run (`--load`)."""
    local = [time_call(classifier.predict, photos[n % len(photos)]) for n in range(max(len(photos), 32))]
    local_rate = 1000 / np.mean(local)
    big = large_jpeg(15 * 1024 * 1024)
    bad = [b"%PDF-1.4 an invoice", photos[0][: len(photos[0]) // 3]]  # not an image; truncated
    ordinary = [bad[n // 10 % 2] if n % 10 == 9 else photos[n % len(photos)] for n in range(requests)]
    print(f"in-process {local_rate:.1f} photos/s; burst of {burst} x {len(big) / 2**20:.1f} MiB with {requests} "
          f"requests from {clients} clients, {requests // 10} of them bad files")
    server = serving(model)
    with server as url, ThreadPoolExecutor(max_workers=burst + clients) as pool:
        started = time.perf_counter()
        big_answers = [pool.submit(post_one, url, big) for _ in range(burst)]
        answers = [pool.submit(post_many, url, ordinary[first::clients]) for first in range(clients)]
        results = [result for future in answers for result in future.result()]
        elapsed = time.perf_counter() - started
        big_results = [future.result() for future in big_answers]
        peak_rss = server.peak_rss()
    for name, group in (("burst", big_results), ("ordinary", results)):
        statuses = [status for status, _ in group]
        print(f"{name:9s} {len(group)} requests: 503 {statuses.count(503)}, other 5xx "
              f"{sum(1 for s in statuses if s >= 500 and s != 503)}, connection errors {statuses.count(0)}, "
              f"statuses {dict(sorted(Counter(statuses).items()))}")
    latencies = np.array([ms for status, ms in results if status])
    answered = sum(1 for status, _ in results if 200 <= status < 500)
    print(f"ordinary  p50 {percentile(latencies, 50):.0f} ms  p99 {percentile(latencies, 99):.0f} ms  "
          f"{answered / elapsed:.1f} answers/s = {answered / elapsed / local_rate:.2f}x in-process one at a time")
    print(f"server peak RSS {peak_rss / 2**20:.0f} MiB")
    return 0


def time_call(call, photo: bytes) -> float:
    started = time.perf_counter()
    call(photo)
    return (time.perf_counter() - started) * 1000


def post_one(url: str, photo: bytes) -> tuple[int, float]:
    """(status, milliseconds); status 0 when the connection failed (e.g. reset after an early 503)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        return post(client, photo)


def post_many(url: str, photos: list[bytes]) -> list[tuple[int, float]]:
    with httpx.Client(base_url=url, timeout=120) as client:
        return [post(client, photo) for photo in photos]


def post(client: httpx.Client, photo: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        status = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"}).status_code
    except httpx.TransportError:
        status = 0
    return status, (time.perf_counter() - started) * 1000


def large_jpeg(size: int) -> bytes:
    """A noise JPEG of about `size` bytes: noise barely compresses, so its pixel count sets its size."""
    side = int((size / 0.85) ** 0.5)  # measured: about 0.85 bytes per noise pixel at quality 90
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def listing_jpegs(count: int) -> list[bytes]:
    if SHARED.is_dir():
        files = sorted(SHARED.rglob("*.jpg"))
        sources = [Image.open(path).convert("RGB") for path in random.Random(0).sample(files, count)]
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_photo

        sources = [make_photo(("ivory", "horn", "not_ivory")[n % 3], n) for n in range(count)]
    photos = []
    for source in sources:
        scale = 1600 / max(source.size)
        buffer = io.BytesIO()
        source.resize((round(source.width * scale), round(source.height * scale))).save(buffer, "JPEG", quality=88)
        photos.append(buffer.getvalue())
    return photos


def paired_latencies(local, remote, photos: list[bytes], requests: int) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per call in-process and through the service, in alternating blocks so that a shared machine's
    changing load weighs on both alike. Blocks, not single calls: onnxruntime's threads spin for a moment after each
    run, which would slow whichever process runs next."""
    times: dict[object, list[float]] = {local: [], remote: []}
    for block in range(0, requests, _BLOCK):
        for call in (local, remote):
            call(photos[0])  # warm-up after the switch
            for number in range(block, min(block + _BLOCK, requests)):
                started = time.perf_counter()
                call(photos[number % len(photos)])
                times[call].append((time.perf_counter() - started) * 1000)
    return np.array(times[local]), np.array(times[remote])


def throughput(url: str, photos: list[bytes], clients: int, requests: int) -> float:
    """Photos per second with `clients` clients, each sending requests one after another, `requests` in all."""

    def client_loop(first: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for number in range(first, requests, clients):
                photo = photos[number % len(photos)]
                client.post("/predict", content=photo, headers={"content-type": "image/jpeg"}).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return requests / (time.perf_counter() - started)


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


class serving:
    """`wildvision serve` in a subprocess on a free loopback port, for the duration of a `with` block."""

    def __init__(self, model: Path | None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        model_option = ["--model", str(model)] if model else []
        self.command = [sys.executable, "-m", "wildvision", *model_option, "serve", "--port", str(self.port)]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/health").raise_for_status()
                return url
            except httpx.TransportError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("the service did not start within 60 s")

    def peak_rss(self) -> int:
        """The service's peak resident memory in bytes (VmHWM, Linux)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
