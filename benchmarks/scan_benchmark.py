"""How fast `wildvision scan` scores a realistic archive, against what a user would otherwise write and the model alone.

    python benchmarks/scan_benchmark.py [--photos 2000] [--archive DIR] [--model M.onnx]

Builds (or reuses) an archive of phone-sized JPEGs (1,000-2,000 px, upscaled from ../shared/data where present, else
generated) with a few corrupt files, then measures in one run:
  naive    timm + PIL full-size decode + PyTorch eager, one photo at a time (needs the [train] extra)
  scan     wildvision's scan, end to end, writing JSON Lines
  ceiling  onnxruntime alone on pre-decoded tensors (the model's own speed: no decoding, no I/O), the faster of one
           batch on all cores and one batch per core side by side
and scan's peak memory on half the archive and on all of it (flat memory: the two should match).
Figures are printed as ratios measured in the same run: these machines are shared and absolute speeds drift.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "wildlife-products-v1" / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--archive", type=Path, help="reuse or create the archive here (default: a temporary folder)")
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--precision", choices=("float32", "int8"), default="float32",
                        help="which shipped model scan and the ceiling use (the naive pipeline is always float32)")
    parser.add_argument("--naive-photos", type=int, default=200, help="the naive pipeline is timed on this many")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="scan's --threads (2: one batch at a time on both cores)")
    args = parser.parse_args(argv)

    from wildvision import Classifier

    classifier = Classifier(args.model, precision=args.precision)
    with tempfile.TemporaryDirectory() as scratch:
        archive = args.archive or Path(scratch) / "archive"
        photos = build_archive(archive, args.photos)
        print(f"archive: {len(photos)} files in {archive}")
        model_args = ["--model", str(args.model)] if args.model else ["--precision", args.precision]
        scan_rate, memory = time_scan(archive, Path(scratch), model_args + ["scan", "--threads", str(args.threads)],
                                      args.batch_size)
        ceiling_rate = time_ceiling(classifier.model_path, photos[:256], args.batch_size)
        naive_rate = time_naive(photos[: args.naive_photos], classifier.info.preprocessing.input_size,
                                architecture=classifier.info.training.get("architecture", "tf_efficientnet_lite0"))
    print(f"scan      {scan_rate:7.1f} photos/s")
    print(f"ceiling   {ceiling_rate:7.1f} photos/s  (onnxruntime on pre-decoded tensors, batches of {args.batch_size})")
    if naive_rate:
        print(f"naive     {naive_rate:7.1f} photos/s  (timm + PIL + PyTorch eager, one at a time)")
        print(f"scan / naive    = {scan_rate / naive_rate:.2f}x")
    print(f"scan / ceiling  = {scan_rate / ceiling_rate:.0%}")
    print(f"peak memory: {memory[0]:.0f} MiB on half the archive, {memory[1]:.0f} MiB on all of it "
          f"(ratio {memory[1] / memory[0]:.2f})")
    return 0


def build_archive(root: Path, count: int) -> list[Path]:
    """`count` JPEGs of 1,000-2,000 px (about 1 in 50 corrupt); existing archives are reused as they are."""
    if root.is_dir() and any(root.iterdir()):
        return sorted(root.rglob("*.jpg"))
    rng = random.Random(0)
    sources = sorted(SHARED.rglob("*.jpg")) if SHARED.is_dir() else []
    rng.shuffle(sources)
    paths = []
    for index in range(count):
        folder = root / f"seller{index % 40:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"listing{index:06d}.jpg"
        side = rng.randint(1000, 2000)
        image = _upscaled(sources[index % len(sources)], side) if sources else _generated(rng, side)
        image.save(path, quality=85)
        if index % 50 == 49:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated upload
        paths.append(path)
    return paths


def _upscaled(source: Path, side: int) -> Image.Image:
    image = Image.open(source).convert("RGB")
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def _generated(rng: random.Random, side: int) -> Image.Image:
    image = Image.new("RGB", (side, side * 3 // 4), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = rng.randint(0, side), rng.randint(0, side)
        draw.ellipse((x, y, x + rng.randint(50, 400), y + rng.randint(50, 400)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


def time_scan(archive: Path, scratch: Path, command: list[str], batch_size: int) -> tuple[float, tuple[float, float]]:
    """Photos/s of a full scan, and peak RSS (MiB) scanning half the archive and all of it, each in a fresh process.

    `command` is the command line up to the scan's inputs, e.g. ["--precision", "int8", "scan", "--threads", "1"].
    """
    files = sorted(archive.rglob("*.jpg"))
    half = scratch / "half.txt"
    half.write_text("\n".join(map(str, files[: len(files) // 2])) + "\n")
    whole = scratch / "whole.txt"
    whole.write_text("\n".join(map(str, files)) + "\n")
    peaks, rate = [], 0.0
    for listing, count in ((half, len(files) // 2), (whole, len(files))):
        output = scratch / f"{listing.stem}.jsonl"
        probe = (
            "import resource, sys, time; from wildvision.cli import main; t = time.monotonic(); "
            f"status = main({command + ['--files-from', str(listing), '-o', str(output), '--batch-size', str(batch_size)]!r}); "
            "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(status)"
        )
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
        seconds, peak = map(float, result.stdout.split())
        peaks.append(peak)
        rate = count / seconds
    return rate, (peaks[0], peaks[1])


def time_ceiling(model: Path, photos: list[Path], batch_size: int) -> float:
    """onnxruntime alone: photos decoded and preprocessed beforehand, then only inference is timed.

    The faster of two layouts counts: one batch at a time on all cores, or one single-threaded batch per core.
    """
    from wildvision import Classifier
    from wildvision.images import ImageLoadError, load_image
    from wildvision.preprocess import to_batch

    cores = os.cpu_count() or 1
    rates = []
    for threads, side_by_side in ((cores, 1), (1, cores)):
        classifier = Classifier(model, threads=threads)
        images = []
        for path in photos:
            try:
                images.append(load_image(path, min_side=classifier.info.preprocessing.input_size))
            except ImageLoadError:
                continue
        batch = to_batch(images, classifier.info.preprocessing)
        batches = [batch[start : start + batch_size] for start in range(0, len(batch), batch_size)]
        classifier.logits(batches[0])  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(side_by_side) as pool:
            list(pool.map(classifier.logits, batches))
        rates.append(len(batch) / (time.perf_counter() - started))
    return max(rates)


def time_naive(photos: list[Path], input_size: int, architecture: str) -> float | None:
    """What a user writes with the training stack: full decode, torchvision transforms, eager PyTorch, batch of one,
    on the same timm architecture as the scanned model."""
    try:
        import timm
        import torch
        from torchvision import transforms
    except ImportError:
        print("naive pipeline skipped: needs the [train] extra (torch, torchvision, timm)")
        return None
    torch.set_num_threads(2)
    model = timm.create_model(architecture, num_classes=2).eval()
    transform = transforms.Compose([
        transforms.Resize((input_size, input_size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3),
    ])
    started = time.perf_counter()
    with torch.no_grad():
        for path in photos:
            try:
                image = Image.open(path).convert("RGB")
            except OSError:
                continue
            model(transform(image).unsqueeze(0)).softmax(1)
    return len(photos) / (time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
