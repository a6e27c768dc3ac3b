"""Fine-tune a wildvision model on labelled photos, on a CPU: `python -m training.train --data DIR_OR_CSV --out RUN_DIR`.

How it fits two CPU cores: the frozen front of the network runs once per photo and per augmented view, and its
outputs are cached on disk; the later blocks, head and classifier then train for several epochs on that cache, each
epoch drawing one view per photo. Temperature and thresholds are fitted on a `calib` part held out of training, and
the metrics come from the `val` split only. The run folder gets the split (`split.json`, read by export and
evaluation instead of splitting again) and a checkpoint that describes itself (`checkpoint.safetensors`).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from training.backbone import build_model, split_model
from training.calibration import calibrate, softmax
from training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from training.checks import check_labels, photo_table, resolve_prohibited
from training.data import Sample, manifest_hash, parse_relabel, prepare_samples, summarise
from training.errors import DataError, run_command
from training.fine_tune import train_tail
from training.frozen_features import FeatureCache
from training.metrics import format_report, format_summary, measure
from training.options import as_json
from training.pretrained import ProbedImageNet, pull_to_start
from training.split import RecordedSplit, write_split
from training.train_config import TrainConfig, parse_args
from wildvision.model_info import OperatingPoint

__all__ = ["TrainedModel", "fit_calibration", "main", "parse_args", "train", "write_run"]


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: _train_or_stop(parse_args(argv)))


def _train_or_stop(config: TrainConfig) -> int:
    """`train`, where Ctrl-C is one line saying that rerunning resumes, with exit status 130."""
    try:
        return train(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: cached features and finished epochs are kept in {config.out}; "
              "run the same command again to resume", file=sys.stderr)
        return 130


def train(config: TrainConfig) -> int:
    """The whole run: split, check, cache, train, calibrate, measure, write. Returns the exit status."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    relabel = parse_relabel(config.relabel)
    samples, split_report = prepare_samples(
        config.data, val_fraction=config.val_fraction, calib_fraction=config.calib_fraction,
        near_duplicate_distance=config.near_duplicate_distance, relabel=relabel,
    )
    print(split_report)
    labels = sorted({s.label for s in samples})
    print(photo_table(samples, labels))
    prohibited = resolve_prohibited(labels, config.prohibited)
    check_labels(samples, labels, allow_rare=config.allow_rare, allow_similar=config.allow_similar_labels)
    split = write_split(config.out, samples, split_report, config.data, relabel)  # once; export and evaluation read it
    identity = model_identity(config.name, config.version, samples)
    print(f"training {identity}: {len(samples)} photos, labels {labels}, prohibited {prohibited}")

    model = build_model(config.architecture, len(labels), pretrained=not config.no_pretrained)
    front, tail = split_model(model, config.trainable_from_block)
    cache = FeatureCache.build(config, samples, front)

    # timm applies head dropout functionally: here it is a layer, active in training only
    tail_trainer = nn.Sequential(*tail[:-1], nn.Dropout(config.dropout), tail[-1])
    history = train_tail(tail_trainer, cache, samples, labels, config, pull_to_start(tail, config.pull_to_pretrained))
    tail.eval()
    network, scorer = model, tail
    if config.keep_pretrained != "none":
        imagenet = ProbedImageNet(config.architecture, config.trainable_from_block, cache, samples, labels)
        network, scorer = imagenet.mixed_with(model, config.keep_pretrained, config.pretrained_share)

    calib_logits, calib = cache.logits(scorer, samples, "calib")
    temperature, operating_points = fit_calibration(calib_logits, calib, labels, prohibited, config)
    # What a recipe is chosen by (epochs, blocks, views): calib, never val, which only reports.
    print("calib " + format_summary(measure(softmax(calib_logits, temperature), calib, labels, operating_points)))
    val_logits, val = cache.logits(scorer, samples, "val")
    metrics = measure(softmax(val_logits, temperature), val, labels, operating_points) if val else {}
    print(format_report(metrics) if metrics else "no val photos: nothing to report")

    write_run(config, network, split, TrainedModel(identity, labels, temperature, operating_points, metrics, history))
    return _check_learnt(metrics, val, config.out)


def fit_calibration(
    logits: np.ndarray, calib: list[Sample], labels: list[str], prohibited: list[str], config: TrainConfig
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature, then each prohibited label's operating point, on the held-out `calib` photos (by the one
    `training.calibration.calibrate` that `training.adapt` fits its thresholds with too)."""
    review_sources = set(config.review_sources) or None  # None: every source's harmless photos bound review
    unknown = (review_sources or set()) - {s.source for s in calib}
    if unknown:
        raise DataError(f"--review-sources names sources with no calib photos: {sorted(unknown)}")
    rule = config.threshold_rule()
    targets = np.array([labels.index(s.label) for s in calib])
    temperature, operating_points = calibrate(logits, targets, [s.source for s in calib], labels, prohibited, rule)
    print("operating points (fitted on calib): " + ", ".join(
        f"{label} review {point.review:.4f} block {point.block:.4f}" for label, point in operating_points.items()))
    return temperature, operating_points


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


@dataclass(frozen=True)
class TrainedModel:
    """What a run found, written into the checkpoint beside the weights."""

    identity: str  # name@version, never a shipped model's (`model_identity`)
    labels: list[str]
    temperature: float
    operating_points: dict[str, OperatingPoint]
    metrics: dict  # `training.metrics.measure` on val; empty without val photos
    history: dict[str, list[float]]  # mean loss per epoch


def write_run(config: TrainConfig, model: nn.Module, split: RecordedSplit, trained: TrainedModel) -> None:
    """The checkpoint (weights plus everything export needs) and the metrics as JSON, in the run folder."""
    name, version = trained.identity.split("@", 1)
    # The prohibited labels as resolved (named, or by the default rule): the config says which, not how they were found.
    recorded = {**as_json(config), "name": name, "version": version, "prohibited": list(trained.operating_points)}
    save_checkpoint(config.out / CHECKPOINT_NAME, {
        "architecture": config.architecture,
        "labels": trained.labels,
        "preprocessing": asdict(config.preprocessing),
        "temperature": trained.temperature,
        "operating_points": {label: asdict(point) for label, point in trained.operating_points.items()},
        "metrics": trained.metrics,
        "data": {**split.fingerprint(), **summarise(split.samples), **asdict(split.report)},
        "parent": f"ImageNet weights of {config.architecture}" if not config.no_pretrained else None,
        "config": recorded,
        "history": trained.history,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, model.state_dict())
    (config.out / "metrics.json").write_text(json.dumps(trained.metrics, indent=2))
    print(f"wrote {config.out / CHECKPOINT_NAME}")


if __name__ == "__main__":
    sys.exit(main())
