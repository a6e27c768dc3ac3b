"""How much faster an int8 model scores photos than its float original, on this machine's CPU.

    python benchmarks/int8_speed.py [FLOAT.onnx INT8.onnx] [--runs 30] [--threads N]

Times onnxruntime alone (`Classifier.logits` on photos already decoded and preprocessed) at batch 1 and batch 8, and
prints the median milliseconds per photo of each model and their ratio. The two models take turns, run by run, so
that load from other work on a shared machine falls on both alike; the ratio is the figure to quote, absolute speeds
drift. Without arguments it times the shipped pair in models/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wildvision.classifier import Classifier, default_model_path
from wildvision.preprocess import to_batch

BATCH_SIZES = (1, 8)
_WARM_UP_RUNS = 3  # the first runs allocate buffers and pick kernels: not what a long-running service sees


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    float_path = args.float_model or default_model_path("float32")
    int8_path = args.int8_model or default_model_path("int8")
    models = {"float32": Classifier(float_path, threads=args.threads), "int8": Classifier(int8_path, threads=args.threads)}
    float_size, int8_size = float_path.stat().st_size, int8_path.stat().st_size
    print(f"float32  {float_path}  {float_size / 2**20:.1f} MiB")
    print(f"int8     {int8_path}  {int8_size / 2**20:.1f} MiB  ({float_size / int8_size:.1f}x smaller)")
    print(f"threads: {args.threads or f'onnxruntime default ({os.cpu_count()} cores)'}; median of {args.runs} runs")
    for batch_size in BATCH_SIZES:
        latency = time_models(models, _photos(batch_size), args.runs)
        print(f"batch {batch_size}:  float32 {latency['float32']:.2f} ms/photo  int8 {latency['int8']:.2f} ms/photo  "
              f"int8 is {latency['float32'] / latency['int8']:.2f}x as fast")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("float_model", type=Path, nargs="?", help="default: the shipped float32 model")
    parser.add_argument("int8_model", type=Path, nargs="?", help="default: the shipped int8 model")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and batch size")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    if (args.float_model is None) != (args.int8_model is None):
        parser.error("give both model files, or neither for the shipped pair")
    return args


def time_models(models: dict[str, Classifier], photos: list[Image.Image], runs: int) -> dict[str, float]:
    """Median milliseconds per photo of each model on one batch of `photos`, the models taking turns run by run."""
    batches = {name: to_batch(photos, model.info.preprocessing) for name, model in models.items()}
    for name, model in models.items():
        for _ in range(_WARM_UP_RUNS):
            model.logits(batches[name])
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            started = time.perf_counter()
            model.logits(batches[name])
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) * 1000 / len(photos) for name, times in seconds.items()}


def _photos(count: int) -> list[Image.Image]:
    """Phone-sized noise photos: convolution time does not depend on what the pixels show."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)) for _ in range(count)]


if __name__ == "__main__":
    sys.exit(main())
