"""Held-out metrics for a model: overall, per label, per source and per kind, the decisions' error rates, and the
ranking curves (ROC, precision-recall) with their areas.

Training (on the PyTorch model) and evaluation (on the exported ONNX file) both report through `measure`, so the
figures in a checkpoint, a model file and a model card are computed the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from training.calibration import expected_calibration_error
from training.data import Sample
from wildvision.decision import decide
from wildvision.model_info import OperatingPoint

__all__ = ["Curve", "auc", "format_report", "format_summary", "fraction", "measure", "precision_recall_curve",
           "roc_curve", "wilson_interval"]


def measure(
    probabilities: np.ndarray,
    samples: Sequence[Sample],
    labels: Sequence[str],
    operating_points: Mapping[str, OperatingPoint],
) -> dict[str, object]:
    """Metrics of calibrated `probabilities` (one row per sample) against the samples' labels."""
    targets = np.array([labels.index(s.label) for s in samples])
    predicted = probabilities.argmax(axis=1)
    correct = predicted == targets
    decisions = [decide(dict(zip(labels, row)), operating_points) for row in probabilities]
    prohibited = [labels.index(label) for label in operating_points]
    is_prohibited = np.isin(targets, prohibited)
    kinds = [s.kind or s.label for s in samples]
    sources = [s.source or "unknown" for s in samples]
    datasets = [s.dataset or "unknown" for s in samples]
    return {
        "photos": len(samples),
        "accuracy": fraction(correct),
        "expected_calibration_error": round(expected_calibration_error(probabilities, targets), 4),
        "per_label": {label: _label_metrics(predicted, targets, index) for index, label in enumerate(labels)},
        "accuracy_by_dataset": _grouped(correct, datasets),
        "accuracy_by_source": _grouped(correct, sources),
        "accuracy_by_kind": _grouped(correct, kinds),
        "decisions": _decision_rates(decisions, is_prohibited),
        # The open world: where the thresholds flag harmless photos, and how much of each source's prohibited photos
        # they catch. A platform checks the kinds of photo it sees most here.
        "decisions_by_dataset": _grouped_decisions(decisions, is_prohibited, datasets),
        "decisions_by_source": _grouped_decisions(decisions, is_prohibited, sources),
        "decisions_by_kind": _grouped_decisions(decisions, is_prohibited, kinds),
    }


def wilson_interval(rate: float | None, photos: int, *, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a rate measured on `photos` photos: honest at 0 %, 100 % and small counts."""
    if rate is None or photos == 0:
        return None
    centre = (rate + z * z / (2 * photos)) / (1 + z * z / photos)
    half = z * np.sqrt(rate * (1 - rate) / photos + z * z / (4 * photos * photos)) / (1 + z * z / photos)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_report(metrics: Mapping[str, object]) -> str:
    """The metrics as a short plain-text table for a terminal."""
    lines = [f"photos {metrics['photos']}  accuracy {metrics['accuracy']}  ECE {metrics['expected_calibration_error']}"]
    for label, values in metrics["per_label"].items():
        lines.append(f"  {label:<20} precision {values['precision']}  recall {values['recall']}  f1 {values['f1']}")
    for title in ("accuracy_by_dataset", "accuracy_by_source", "accuracy_by_kind"):
        lines.append(title.replace("_", " ") + ":")
        lines += [f"  {name:<20} {value['accuracy']}  (n={value['photos']})" for name, value in metrics[title].items()]
    lines.append("decisions: " + "  ".join(f"{key} {value}" for key, value in metrics["decisions"].items()))
    lines.append("decisions by source (flagged = sent to review or blocked):")
    lines += [f"  {name:<20} prohibited flagged {value['prohibited_flagged']} (n={value['prohibited']})  "
              f"harmless flagged {value['harmless_flagged']} blocked {value['harmless_blocked']} (n={value['harmless']})"
              for name, value in metrics["decisions_by_source"].items()]
    return "\n".join(lines)


def format_summary(metrics: Mapping[str, object]) -> str:
    """One line: accuracy overall and per source, and the share of prohibited photos the thresholds catch."""
    by_source = "  ".join(f"{name} {value['accuracy']}" for name, value in metrics["accuracy_by_source"].items())
    decisions = metrics["decisions"]
    return (f"accuracy {metrics['accuracy']} ({by_source}); prohibited flagged {decisions['prohibited_flagged']} "
            f"blocked {decisions['prohibited_blocked']}")


def _decision_rates(decisions: Sequence[str], is_prohibited: Sequence[bool]) -> dict[str, float | int | None]:
    """Of prohibited photos, how many were blocked or at least sent to review; of harmless ones, how many were too."""
    prohibited = [d for d, p in zip(decisions, is_prohibited) if p]
    harmless = [d for d, p in zip(decisions, is_prohibited) if not p]
    return {
        "prohibited_blocked": fraction([d == "block" for d in prohibited]),
        "prohibited_flagged": fraction([d != "allow" for d in prohibited]),
        "harmless_blocked": fraction([d == "block" for d in harmless]),
        "harmless_flagged": fraction([d != "allow" for d in harmless]),
    }


def _grouped_decisions(
    decisions: Sequence[str], is_prohibited: np.ndarray, keys: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    return {
        key: {"prohibited": int(is_prohibited[members].sum()), "harmless": int((~is_prohibited[members]).sum()),
              **_decision_rates([decisions[i] for i in members], is_prohibited[members])}
        for key, members in sorted(groups.items())
    }


def fraction(flags: Sequence[bool] | np.ndarray) -> float | None:
    """The share of `flags` that are true, to 4 places; None for no flags (a rate of nothing is not 0)."""
    return round(float(np.mean(flags)), 4) if len(flags) else None


def _label_metrics(predicted: np.ndarray, targets: np.ndarray, index: int) -> dict[str, float | int | None]:
    """Precision, recall and F1 of one label; None where undefined (nothing predicted, or no photos of it)."""
    true_positive = int(((predicted == index) & (targets == index)).sum())
    predicted_count, actual_count = int((predicted == index).sum()), int((targets == index).sum())
    precision = true_positive / predicted_count if predicted_count else None
    recall = true_positive / actual_count if actual_count else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": _round(precision), "recall": _round(recall), "f1": _round(f1), "photos": actual_count}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _grouped(flags: np.ndarray, keys: Sequence[str], *, rate: str = "accuracy") -> dict[str, dict[str, float | int]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, flag in zip(keys, flags):
        groups[key].append(bool(flag))
    return {key: {rate: fraction(values), "photos": len(values)} for key, values in sorted(groups.items())}


@dataclass(frozen=True)
class Curve:
    """Points of a ranking curve, threshold falling left to right, and the area that summarises it.

    ROC: x false positive rate, y true positive rate, area the ROC AUC. Precision-recall: x recall, y precision, area
    the average precision.
    """

    x: np.ndarray
    y: np.ndarray
    area: float


def roc_curve(scores: np.ndarray, is_positive: np.ndarray) -> Curve:
    """One-vs-rest ROC of `scores`; its area is the chance that a positive outranks a negative (ties count half)."""
    true_positives, false_positives = _counts_by_threshold(scores, is_positive)
    true_rate = np.r_[0.0, true_positives / true_positives[-1]]
    false_rate = np.r_[0.0, false_positives / false_positives[-1]]
    area = float(np.sum(np.diff(false_rate) * (true_rate[1:] + true_rate[:-1]) / 2))  # trapezoids
    return Curve(false_rate, true_rate, area)


def precision_recall_curve(scores: np.ndarray, is_positive: np.ndarray) -> Curve:
    """One-vs-rest precision-recall curve; its area is average precision (each threshold's precision weighted by the
    recall it adds, as scikit-learn defines it: no interpolation, so it does not flatter a curve)."""
    true_positives, false_positives = _counts_by_threshold(scores, is_positive)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    average_precision = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    # Plotted from recall 0 at precision 1: nothing flagged yet, so no false alarm either.
    return Curve(np.r_[0.0, recall], np.r_[1.0, precision], average_precision)


def auc(scores: np.ndarray, is_positive: np.ndarray) -> float | None:
    """The ROC curve's area to 4 places (see `roc_curve`); None without both positive and negative photos."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return None
    return round(roc_curve(scores, is_positive).area, 4)


def _counts_by_threshold(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives flagged at each distinct score taken as the threshold, highest first."""
    scores, is_positive = np.asarray(scores, dtype=np.float64), np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        raise ValueError("a ranking curve needs both positive and negative photos")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], is_positive[order]
    # Equal scores pass a threshold together, so only the last photo of each run of ties ends a point of the curve.
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
    return np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
