"""Single-photo latency in-process and through `wildvision serve`, and the service's throughput under concurrent clients.

    python benchmarks/service_benchmark.py [--model M.onnx] [--requests 200] [--clients 1 4 8]
    python benchmarks/service_benchmark.py --load [--burst 64] [--requests 2000] [--clients 16]

Photos are phone-sized JPEGs (listing photos from ../shared/data scaled to 1,600 px, else generated). Measures in
one run: `Classifier.predict(bytes)` latency p50/p99 and the same through the service on loopback (`wildvision serve`
in a subprocess, httpx as the client, one request at a time), alternating in blocks; then photos per second
with N clients each sending one request after another, as a ratio of in-process calls one at a time (from the
latency run). These machines are shared, so compare the ratios rather than the absolute figures.

`--load` instead puts a service started as `--max-concurrency 2 --max-queue 4` (change with `--serve-options`) under
bursts, and counts what the clients received, not what the server logged: `--burst` clients at once each upload one
phone photo (12 MP JPEGs of 3-8 MiB: listing photos scaled to 4032 x 3024 with sensor-like grain), then `--burst`
clients at once each upload 16 MiB; the clients take turns among Python's urllib (which sends `Connection: close`),
http.client, httpx and curl (which sends `Expect: 100-continue`). For each burst it prints, per client, how many got
a 200, a 503 with `Retry-After`, another answer, or no answer (a reset), the service's discarded bytes as a share of
the bytes the refused clients sent, and the server's peak RSS. Then `--clients` clients send `--requests` ordinary
photos one after another beside a 16 MiB burst, a tenth of them bad files: the 5xx answers (503s apart), p50/p99
latency of the ordinary requests, their throughput as a ratio of in-process scoring one at a time, and the peak RSS
(loopback only; bounded by the counts given).
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "wildlife-products-v1" / "images"
_BLOCK = 25  # latency calls in a row before switching between in-process and service
MiB = 1024 * 1024
PHONE_SIZES = (3, 4, 5, 6, 7, 8)  # MiB: 12 MP phone JPEGs, from a plain scene to a detailed one at high quality
BURST_CLIENTS = ("urllib", "http.client", "httpx", "curl")
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402  (the [test] extra)

from wildvision import Classifier, Client, ImageLoadError, ServiceError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--requests", type=int, default=200, help="per latency measurement and per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--load", action="store_true", help="the burst and load run instead of latency/throughput")
    parser.add_argument("--burst", type=int, default=64, help="--load: clients uploading at once")
    parser.add_argument("--serve-options", default="--max-concurrency 2 --max-queue 4",
                        help="--load: options of the service under load")
    args = parser.parse_args(argv)
    photos = listing_jpegs(16)
    classifier = Classifier(args.model)
    if args.load:
        return load(classifier, args.model, photos, args, shlex.split(args.serve_options))
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


def load(classifier: Classifier, model: Path | None, photos: list[bytes], args: argparse.Namespace,
         serve_options: list[str]) -> int:
    """The burst and load run (`--load`)."""
    requests, clients = args.requests, args.clients[0]
    local = [time_call(classifier.predict, photos[n % len(photos)]) for n in range(max(len(photos), 32))]
    local_rate = 1000 / np.mean(local)
    phones = phone_jpegs(PHONE_SIZES)
    big = large_jpeg(16 * MiB)
    bad = [b"%PDF-1.4 an invoice", photos[0][: len(photos[0]) // 3]]  # not an image; truncated
    ordinary = [bad[n // 10 % 2] if n % 10 == 9 else photos[n % len(photos)] for n in range(requests)]
    print(f"service: {' '.join(serve_options)}; in-process {local_rate:.1f} photos/s; phone photos of "
          f"{', '.join(f'{len(p) / MiB:.1f}' for p in phones)} MiB")
    server = serving(model, serve_options)
    with server as url, tempfile.TemporaryDirectory() as folder:
        for name, uploads in ((f"{args.burst} x phone photo", phones), (f"{args.burst} x 16 MiB", [big])):
            files = [Path(folder) / f"{n}.jpg" for n in range(len(uploads))]  # curl uploads from a file
            for file, upload in zip(files, uploads):
                file.write_bytes(upload)
            before = refused_uploads(url)
            received = burst(url, uploads, files, args.burst)
            after = refused_uploads(url)
            print_burst(name, received, {key: after[key] - before.get(key, 0) for key in after}, server.peak_rss())
        with ThreadPoolExecutor(max_workers=args.burst + clients) as pool:
            started = time.perf_counter()
            big_answers = [pool.submit(post_one, url, big) for _ in range(args.burst)]
            answers = [pool.submit(post_many, url, ordinary[first::clients]) for first in range(clients)]
            results = [result for future in answers for result in future.result()]
            elapsed = time.perf_counter() - started
            big_results = [future.result() for future in big_answers]
        peak_rss = server.peak_rss()
    print(f"beside ordinary traffic: {requests} requests from {clients} wildvision.Client clients (retrying 503s), "
          f"{requests // 10} of them bad files, and a burst of {args.burst} x 16 MiB from httpx")
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


def burst(url: str, uploads: list[bytes], files: list[Path], count: int) -> list[tuple[str, str]]:
    """`count` clients at once, each uploading one photo (taking turns among `BURST_CLIENTS` and `uploads`): what
    each received, as (client, outcome)."""

    def one(number: int) -> tuple[str, str]:
        client = BURST_CLIENTS[number % len(BURST_CLIENTS)]
        photo, file = uploads[number % len(uploads)], files[number % len(uploads)]
        return client, (curl_upload(url, file) if client == "curl" else python_upload(client, url, photo))

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def outcome(status: int, retry_after: str | None) -> str:
    if status == 503:
        return "503 + Retry-After" if retry_after else "503 without Retry-After"
    return str(status)


def python_upload(client: str, url: str, photo: bytes) -> str:
    """What a Python client received for `photo`: `outcome`, or the error it raised instead (a reset)."""
    headers = {"Content-Type": "image/jpeg"}
    try:
        if client == "urllib":
            request = urllib.request.Request(f"{url}/predict", data=photo, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
                    return outcome(response.status, response.headers.get("Retry-After"))
            except urllib.error.HTTPError as error:
                return outcome(error.code, error.headers.get("Retry-After"))
        if client == "http.client":
            host, port = url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                connection.request("POST", "/predict", body=photo, headers=headers)
                response = connection.getresponse()
                response.read()
                return outcome(response.status, response.getheader("Retry-After"))
            finally:
                connection.close()
        response = httpx.post(f"{url}/predict", content=photo, headers=headers, timeout=120)
        return outcome(response.status_code, response.headers.get("Retry-After"))
    except (OSError, http.client.HTTPException, httpx.TransportError) as error:
        return f"no answer: {type(getattr(error, 'reason', error)).__name__}"  # urllib wraps the socket's error


def curl_upload(url: str, file: Path) -> str:
    """What curl received for `file` (curl sends `Expect: 100-continue` for a body over 1 MiB)."""
    run = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "120", "--data-binary",
                          f"@{file}", "-H", "Content-Type: image/jpeg", f"{url}/predict"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return f"no answer: curl exit {run.returncode}"  # 55: send failed, 56: receive failed (a reset)
    heads = [line for line in run.stdout.splitlines() if line.startswith("HTTP/")]
    retry_after = [line for line in run.stdout.splitlines() if line.lower().startswith("retry-after:")]
    return outcome(int(heads[-1].split()[1]), retry_after[0] if retry_after else None)  # the last: after any 100


def print_burst(name: str, received: list[tuple[str, str]], refused: dict[str, float], peak_rss: int) -> None:
    print(f"burst {name}:")
    for client in BURST_CLIENTS:
        outcomes = Counter(result for kind, result in received if kind == client)
        print(f"  {client:12s} {dict(sorted(outcomes.items()))}")
    no_answer = sum(1 for _, result in received if result.startswith("no answer"))
    discarded = refused.pop("discarded_bytes")
    print(f"  no answer {no_answer} of {len(received)}; the service's refused uploads {refused}, "
          f"{discarded / MiB:.0f} MiB discarded; server peak RSS so far {peak_rss / MiB:.0f} MiB")


def refused_uploads(url: str) -> dict[str, float]:
    """`wildvision_refused_uploads_total` by outcome, and `wildvision_discarded_bytes_total`, from /metrics."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("wildvision_refused_uploads_total{"):
            counts[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("wildvision_discarded_bytes_total "):
            counts["discarded_bytes"] = float(line.split()[-1])
    return counts


def time_call(call, photo: bytes) -> float:
    started = time.perf_counter()
    call(photo)
    return (time.perf_counter() - started) * 1000


def post_one(url: str, photo: bytes) -> tuple[int, float]:
    """(status, milliseconds); status 0 when the connection failed (e.g. reset after an early 503)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        return post(client, photo)


def post_many(url: str, photos: list[bytes]) -> list[tuple[int, float]]:
    """A well-behaved client: `wildvision.Client`, which retries a 503 after its Retry-After. (status, milliseconds
    including the retries) per photo; the status the client gave up on, 0 for no answer."""
    results = []
    with Client(url, attempts=10, timeout=120) as client:
        for photo in photos:
            started = time.perf_counter()
            try:
                client.predict(photo)
                status = 200
            except ImageLoadError:
                status = 422
            except ServiceError as error:
                status = error.status or 0
            results.append((status, (time.perf_counter() - started) * 1000))
    return results


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


def phone_jpegs(sizes: tuple[int, ...]) -> list[bytes]:
    """12 MP JPEGs of about `sizes` MiB: listing photos scaled to 4032 x 3024 with grain added until they weigh what
    a phone's photo of that scene would (a sensor's noise is most of a phone JPEG's bytes)."""
    return [grained_to(source.resize((4032, 3024)), size * MiB) for source, size in zip(sources_of(len(sizes)), sizes)]


def grained_to(image: Image.Image, size: int) -> bytes:
    """`image` as a quality-92 JPEG with Gaussian grain, its strength halved in on until the file is within 10% of
    `size` bytes (or after eight tries)."""
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(size).standard_normal(pixels.shape, dtype=np.float32)
    low, high, encoded = 0.0, 40.0, b""
    for _ in range(8):
        sigma = (low + high) / 2
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels + sigma * noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
        encoded = buffer.getvalue()
        if abs(len(encoded) - size) < size / 10:
            break
        low, high = (sigma, high) if len(encoded) < size else (low, sigma)
    return encoded


def sources_of(count: int) -> list[Image.Image]:
    """`count` listing photos from ../shared/data, else generated ones."""
    if SHARED.is_dir():
        files = sorted(SHARED.rglob("*.jpg"))
        return [Image.open(path).convert("RGB") for path in random.Random(0).sample(files, count)]
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_photo

    return [make_photo(("ivory", "horn", "not_ivory")[n % 3], n) for n in range(count)]


def listing_jpegs(count: int) -> list[bytes]:
    sources = sources_of(count)
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

    def __init__(self, model: Path | None, options: list[str] | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        model_option = ["--model", str(model)] if model else []
        self.command = [sys.executable, "-m", "wildvision", *model_option, "serve", "--port", str(self.port),
                        *(options or [])]

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
