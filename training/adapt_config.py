"""The options of `python -m training.adapt`: one frozen `AdaptConfig`, from `--config FILE.toml` and the command line.

Declared once, as `training.train_config` declares training's (`training.options`): each field's help, default, range
and whether the adapted head's weights depend on it. The constants a default or a help text names live here, with
their measured reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training.calibration import ThresholdRule
from training.errors import ConfigError
from training.options import AT_LEAST_0, AT_LEAST_1, POSITIVE, SHARE, check_ranges, option, parse

__all__ = ["DEFAULT_MAX_EVERYDAY_FLAGGED", "DEFAULT_MAX_FORGETTING", "DEFAULT_STAY_CLOSE_ALONE", "AdaptConfig",
           "parse_args"]

# What a release may lose at its decisions on the base's own photos, overall and in any source of 100 or more, beyond
# what their number can tell (training.adapt.judge): one judge, for the search and the refusal alike.
DEFAULT_MAX_FORGETTING = 0.01
# Without base data or reference nothing can choose the pull. In the shared-data simulation (ImageNet network,
# Towneley as the platform, 100 and 300 photos) pulls up to 1.0 lost 1.2-9 points on base training photos and 10 lost
# 0.2-0.3, so 10 it is: measured on base *training* photos, never on the val photos the forgetting figures come from.
DEFAULT_STAY_CLOSE_ALONE = 10.0
# Thresholds whose reference everyday photos flagged exceed this share are refused (the base 1.1.0 flags 0.2 % of
# its calib everyday photos, 0.12 % of its val ones): five times the base's share, and a queue a platform notices.
DEFAULT_MAX_EVERYDAY_FLAGGED = 0.01


@dataclass(frozen=True)
class AdaptConfig:
    """An adapting run's options (threshold shares are checked by `ThresholdRule`, the one rule train uses too)."""

    config: Path | None = option(None, "a TOML file of option values (same names as the options, `-` or `_`)",
                                 changes_weights=False)
    model: Path | None = option(None, "the wildvision model to adapt (.onnx)", changes_weights=True)
    data: tuple[Path, ...] = option(
        (), "labelled photos: folder per label, a CSV (path,label[,group]) or a folder with manifest.csv, e.g. the CSV "
            "training.select wrote and a reviewer filled in; repeatable", changes_weights=True, repeatable=True)
    reference: Path | None = option(
        None, "the model's reference vectors (default: NAME.reference.npz beside the model)", changes_weights=True)
    base_data: tuple[Path, ...] = option(
        (), "the base model's training photos, in place of the reference's replay and val vectors: a sample of its "
            "non-val photos is replayed (others anchor the pull where there is no reference), its val photos measure "
            "forgetting; repeatable", changes_weights=True, repeatable=True)
    out: Path | None = option(None, "the .onnx file to write", changes_weights=False)
    new_label: tuple[str, ...] = option(
        (), "a label the base model lacks; any other unknown label in the data is refused as a typo",
        changes_weights=True, metavar="LABEL", repeatable=True)
    relabel: tuple[str, ...] = option(
        (), "give photos of a `kind` their own label, in --data, --base-data and the reference", changes_weights=True,
        metavar="KIND=LABEL")
    name: str | None = option(None, "model name (default: the base model's)", changes_weights=False)
    version: str | None = option(
        None, "model version (default: the base version + '+adapted.' + data fingerprint)", changes_weights=False)
    review_recall: float | None = option(
        None, "set review to send this share of prohibited photos to review, whatever it costs in false alarms "
              "(default: review flags no more everyday photos than the base's)", changes_weights=True)
    review_fpr: float | None = option(
        None, "set review so that at most this share of each everyday source's harmless photos is flagged (default: "
              "no more than the base flags)", changes_weights=True)
    block_fpr: float | None = option(
        None, "set block so that at most this share of each source's harmless photos is blocked (default: no more "
              "than the base blocks)", changes_weights=True)
    max_everyday_flagged: float = option(
        DEFAULT_MAX_EVERYDAY_FLAGGED, "refuse thresholds that flag more than this share of the reference everyday "
                                      "photos", changes_weights=False, bounds=SHARE)
    allow_flagging_everyday: bool = option(
        False, "write the model even where its thresholds flag more than --max-everyday-flagged", changes_weights=False)
    allow_forgetting: bool = option(
        False, "write the candidate that gains most on your photos even where the judge finds it forgets more than "
               "--max-forgetting", changes_weights=True)
    base_photos: int = option(1000, "base training photos replayed at most", changes_weights=True, bounds=AT_LEAST_0)
    anchor_photos: int = option(
        1000, "with --base-data and no reference: other base training photos (not replayed) that judge forgetting "
              "(with a reference, its calib vectors do)", changes_weights=True,
        bounds=AT_LEAST_0)
    max_forgetting: float = option(
        DEFAULT_MAX_FORGETTING, "accuracy at its decisions the adapted model may lose on the base's calib vectors "
                                "(overall and in any source of 100+), beyond what their number can tell (95 %% bound)",
        changes_weights=True, bounds=SHARE)
    check_photos: int = option(1000, "base val photos on which forgetting is measured the same way and reported (held "
                                     "out of every choice)", changes_weights=False, bounds=AT_LEAST_0)
    stay_close: float | None = option(
        None, f"a fixed pull towards the base head's weights instead of the search over pulls (the mixes with the base "
              f"head are still tried; default with nothing to judge by: {DEFAULT_STAY_CLOSE_ALONE})",
        changes_weights=True, bounds=POSITIVE)
    work: Path | None = option(None, "feature cache, kept for reruns (default: OUT's folder/.adapt-cache)",
                               changes_weights=False)
    parity_photos: int = option(16, "labelled photos the written model is checked on", changes_weights=False,
                                bounds=AT_LEAST_1)
    tolerance: float = option(1e-3, "largest allowed logit difference", changes_weights=False, bounds=POSITIVE)
    int8: bool = option(False, "also write a checked int8 twin NAME.int8.onnx", changes_weights=False)
    threads: int | None = option(None, "onnxruntime threads (default: all cores)", changes_weights=False,
                                 bounds=AT_LEAST_1)

    def __post_init__(self) -> None:
        missing = [f"--{name}" for name in ("model", "data", "out") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)}: required (on the command line or in --config)")
        check_ranges(self)
        self.threshold_rule()  # a bad share is refused before any photo is read

    def threshold_rule(self) -> ThresholdRule:
        """The thresholds' rule (the same `ThresholdRule` training builds from its own options)."""
        return ThresholdRule(review_recall=self.review_recall, review_fpr=self.review_fpr, block_fpr=self.block_fpr)


def parse_args(argv: Sequence[str] | None) -> AdaptConfig:
    return parse(AdaptConfig, argv, prog="python -m training.adapt",
                 description="Adapt a released wildvision model to a platform's own labelled photos in minutes on a "
                             "CPU.")
