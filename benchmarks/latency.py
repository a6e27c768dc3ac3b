"""How long one listing photo takes from JPEG bytes to a decision, as a platform calling `Classifier.predict` sees it.

    python benchmarks/latency.py [--runs 200] [--callers 1 4]
    python benchmarks/latency.py --models old.onnx models/wildvision-ivory.onnx   # one release against another

For 1-megapixel and 12-megapixel JPEGs (bytes in memory: decoding, preprocessing, inference, calibration, decision),
with the shipped float32 and int8 models (or the `--models` given), one caller at a time and several callers sharing
one `Classifier` from their own threads: p50 and p99 milliseconds per photo, and each model's p50 relative to the
first model's. Run it on an idle machine: the rows are timed one after another, in turns
that alternate the models (so a drift falls on each alike): compare rows of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wildvision import Classifier

SIZES = {"1 MP": (1152, 864), "12 MP": (4000, 3000)}
_WARM_UP = 5  # first calls allocate onnxruntime's buffers and pick kernels: not what a running service sees


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="photos timed per model, size and caller count")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 4], help="threads calling predict at once")
    parser.add_argument("--models", type=Path, nargs="+", help="model files to time instead of the shipped ones")
    args = parser.parse_args(argv)
    if args.models:
        models = {_label(classifier): classifier for classifier in map(Classifier, args.models)}
    else:
        models = {precision: Classifier(precision=precision) for precision in ("float32", "int8")}
    photos = {name: listing_jpeg(size) for name, size in SIZES.items()}
    width = max(8, *map(len, models))
    print(f"{'model':{width}s} {'photo':6s} {'callers':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'photos/s':>9s} {'p50 ratio':>9s}")
    for callers in args.callers:
        for size_name, data in photos.items():
            timed = time_interleaved(models, data, args.runs, callers)
            first = None
            for name, (latencies, seconds) in timed.items():
                p50, p99 = np.percentile(latencies, [50, 99])
                first = first or p50
                print(f"{name:{width}s} {size_name:6s} {callers:7d} {p50:8.1f} {p99:8.1f} {args.runs / seconds:9.1f} "
                      f"{p50 / first:9.2f}")
    return 0


def _label(classifier: Classifier) -> str:
    return f"{classifier.info.full_name} {classifier.info.precision}"


def listing_jpeg(size: tuple[int, int]) -> bytes:
    """A phone-like JPEG: an object on a textured table, sensor noise, quality 90 (what listings upload)."""
    rng = np.random.default_rng(0)
    width, height = size
    table = rng.normal(150, 20, (height // 8, width // 8, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(table).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(230, 220, 195))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def time_interleaved(
    models: dict[str, Classifier], data: bytes, runs: int, callers: int, rounds: int = 10
) -> dict[str, tuple[list[float], float]]:
    """`time_predict` for each model, in `rounds` turns of runs / rounds photos each: a drift of the shared machine
    falls on every model alike, so their ratios hold even where absolute times wander."""
    timed: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in models}
    for _ in range(rounds):
        for name, classifier in models.items():
            latencies, seconds = time_predict(classifier, data, max(1, runs // rounds), callers)
            timed[name] = (timed[name][0] + latencies, timed[name][1] + seconds)
    return timed


def time_predict(classifier: Classifier, data: bytes, runs: int, callers: int) -> tuple[list[float], float]:
    """Milliseconds of each `predict(data)` call, `callers` threads calling at once; and the wall time of all."""
    for _ in range(_WARM_UP):
        classifier.predict(data)

    def call(_: int) -> float:
        started = time.perf_counter()
        classifier.predict(data)
        return (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        latencies = list(pool.map(call, range(runs)))
    return latencies, time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
