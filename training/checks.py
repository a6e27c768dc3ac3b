"""Checks that stop a training run before it spends an hour on data that can only give a silently bad model.

Every check names the fix. The minimum photo counts are per label and split: below them a label cannot be trained
(`train`), calibrated and given thresholds (`calib`), or measured (`val`); `--allow-rare` proceeds knowingly.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from training.data import MIN_CALIB_PHOTOS, Sample
from training.errors import DataError

__all__ = ["HARMLESS_PREFIX", "MIN_PHOTOS", "check_labels", "photo_table", "resolve_prohibited", "similar_labels"]

MIN_PHOTOS = {"train": 10, "calib": MIN_CALIB_PHOTOS, "val": 2}  # per label and split
SPLITS = ("train", "calib", "val")
# The one default for which labels are prohibited (lead to review or block and get operating points), where neither
# --prohibited nor the config names them: every label except those named `not_*`, the harmless rest (`not_ivory`).
# Train and adapt (for its new labels) both read it here.
HARMLESS_PREFIX = "not_"


def photo_table(samples: Iterable[Sample], labels: Sequence[str]) -> str:
    """Photos per label and split, as a plain-text table for the start of a training log."""
    counts = Counter((s.label, s.split) for s in samples)
    width = max(len("label"), *map(len, labels))
    lines = [f"{'label':<{width}}  " + "  ".join(f"{split:>6}" for split in SPLITS)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{counts[label, split]:>6}" for split in SPLITS) for label in labels]
    return "\n".join(lines)


def check_labels(samples: Sequence[Sample], labels: Sequence[str], *, allow_rare: bool, allow_similar: bool) -> None:
    """Raise `DataError` for labels that look like typos of one another, or with too few photos in a split."""
    if not allow_similar:
        for first, second in similar_labels(labels):
            raise DataError(f"labels {first!r} and {second!r} look like one label spelt two ways (case, spaces or a "
                            "typo): fix the label column or folder name, or pass --allow-similar-labels if both are real")
    counts = Counter((s.label, s.split) for s in samples)
    short = [f"{label!r} has {counts[label, split]} {split} photo(s), needs {minimum}"
             for label in labels for split, minimum in MIN_PHOTOS.items() if counts[label, split] < minimum]
    if short and not allow_rare:
        raise DataError("too few photos to train, calibrate and measure every label: " + "; ".join(short)
                        + ". Add photos (or raise --calib-fraction / --val-fraction for small data), or pass "
                          "--allow-rare to train anyway, knowing its thresholds and figures rest on very few photos")


def resolve_prohibited(labels: list[str], named: Sequence[str] | None) -> list[str]:
    """The labels that lead to review or block: those `named` (--prohibited or the config), else the default rule."""
    prohibited = list(named) if named else [label for label in labels if not label.startswith(HARMLESS_PREFIX)]
    unknown = set(prohibited) - set(labels)
    if unknown:
        raise DataError(f"--prohibited names labels not in the data: {sorted(unknown)} (labels: {labels})")
    if not prohibited:
        raise DataError(f"no prohibited label among {labels}; name them with --prohibited")
    return prohibited


def similar_labels(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of labels equal up to case, spaces, `-` and `_`, or one typo apart (an edit or a swap of neighbours)."""
    pairs = []
    for index, first in enumerate(labels):
        for second in labels[index + 1:]:
            a, b = _normalised(first), _normalised(second)
            if a == b or (min(len(a), len(b)) >= 4 and _typo_distance(a, b) <= 1):
                pairs.append((first, second))
    return pairs


def _normalised(label: str) -> str:
    return re.sub(r"[\s_\-]+", "", label.casefold())


def _typo_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two neighbours."""
    previous2, previous = None, list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]
