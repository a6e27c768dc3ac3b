"""What adapt refuses to write, and warns of: forgetting the base (as the judge finds it), flooding the open world,
thresholds set by too few photos. Each refusal says what the closest model would cost and which value to try."""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

import numpy as np

from training.adapt.fit import Adapted
from training.adapt.inputs import BaseCalibration, OpenWorld
from training.adapt_config import AdaptConfig
from training.calibration import flag_rates, softmax
from training.errors import ExportRefused
from training.head import Head
from wildvision.model_info import OperatingPoint

__all__ = ["THIN_PROHIBITED_PHOTOS", "ForgettingRefused", "OpenWorldRefused", "open_world_rates", "refuse_flooding",
           "refuse_forgetting", "warn_if_thresholds_are_thin"]

THIN_PROHIBITED_PHOTOS = 50  # below this, 95 % recall is set by the 2nd or 3rd weakest photo: a warning, not a refusal


class OpenWorldRefused(ExportRefused):
    """The thresholds would flag more of the everyday reference than allowed; nothing was written."""

    prefix = "refused"


class ForgettingRefused(ExportRefused):
    """No candidate keeps the base's decisions within the judge's bound; nothing was written."""

    prefix = "refused"


def refuse_forgetting(adapted: Adapted, args: AdaptConfig) -> None:
    """Refuse where the judge accepted no candidate (the chosen one is then the closest), unless --allow-forgetting.

    It reads the verdict the search gave the chosen candidate, never a new one: what the search accepts is written.
    """
    verdict = adapted.verdict
    if verdict is None or verdict.accepted or args.allow_forgetting:
        return
    chosen, freest = adapted.chosen, max(adapted.candidates, key=lambda c: c.gain)
    needed = np.ceil(verdict.needed * 1000) / 1000  # a value that accepts it, to three decimals
    raise ForgettingRefused(
        f"no candidate keeps the base's decisions within --max-forgetting {verdict.tolerance:g}; the closest (pull "
        f"{chosen.pull:g}, mix {chosen.mix:g}) loses {verdict.describe()}; try --max-forgetting {needed:.3f} to "
        f"write it, or --allow-forgetting to write the one that gains most (pull {freest.pull:g}, mix {freest.mix:g}: "
        f"cross-validated {freest.gain:.3f} on your photos, base {adapted.base_gain:.3f})")


def refuse_flooding(rates: Mapping[str, object], args: AdaptConfig) -> None:
    if rates["flagged"] > args.max_everyday_flagged and not args.allow_flagging_everyday:
        raise OpenWorldRefused(
            f"the thresholds would flag {rates['flagged']:.1%} of the {rates['photos']} reference everyday photos "
            f"(the base flags {rates['base_flagged']:.1%}), more than --max-everyday-flagged "
            f"{args.max_everyday_flagged:g}; leave --review-recall/--review-fpr out to match the base, or pass "
            "--allow-flagging-everyday to write it anyway")


def open_world_rates(
    open_world: OpenWorld, head: Head, start: Head, temperature: float, points: Mapping[str, OperatingPoint],
    labels: Sequence[str], base: BaseCalibration,
) -> dict[str, object]:
    """Shares of the reference's everyday harmless photos that the adapted and the base model flag and block."""
    vectors = open_world.vectors
    everyday = np.isin(vectors.sources, sorted(open_world.review_sources)) & ~np.isin(vectors.labels, list(points))
    embeddings = vectors.embeddings[everyday]
    flagged, blocked = flag_rates(softmax(head.logits(embeddings), temperature), labels, points)
    base_flagged, base_blocked = flag_rates(base.probabilities(start, embeddings), labels, base.operating_points)
    return {"photos": int(everyday.sum()), "sources": sorted(open_world.review_sources),
            "flagged": round(flagged, 4), "blocked": round(blocked, 4),
            "base_flagged": round(base_flagged, 4), "base_blocked": round(base_blocked, 4)}


def warn_if_thresholds_are_thin(targets: np.ndarray, labels: Sequence[str], prohibited: Sequence[str]) -> None:
    """Say where `review` was set by the recall of a few dozen photos and nothing else bounds its false alarms.

    Without base data, thresholds fitted at a recall of a handful of prohibited photos know nothing of the rest of
    the world: in the shared-data simulation, 11 labelled ivory photos gave thresholds that flagged 39 % of everyday
    photos.
    """
    counts = {label: int((targets == labels.index(label)).sum()) for label in prohibited}
    thin = {label: count for label, count in counts.items() if count < THIN_PROHIBITED_PHOTOS}
    if thin:
        print(f"warning: review is set at a recall of only {thin} labelled photo(s) and no base data bounds its "
              "false alarms; give --base-data, or --review-fpr, or keep your own thresholds "
              "(--operating-points at load time)", file=sys.stderr)
