"""Held-out metrics for a model: overall, per label, per source and per kind, and the decisions' error rates.

Training (on the PyTorch model) and evaluation (on the exported ONNX file) both report through `measure`, so the
figures in a checkpoint, a model file and a model card are computed the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from training.calibration import expected_calibration_error
from training.data import Sample
from wildvision.classifier import decide
from wildvision.model_info import OperatingPoint

__all__ = ["measure", "format_report"]


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
    return {
        "photos": len(samples),
        "accuracy": _rate(correct),
        "expected_calibration_error": round(expected_calibration_error(probabilities, targets), 4),
        "per_label": {label: _label_metrics(predicted, targets, index) for index, label in enumerate(labels)},
        "accuracy_by_source": _grouped(correct, [s.source or "unknown" for s in samples]),
        "accuracy_by_kind": _grouped(correct, kinds),
        # Where the block threshold bites: a platform checks its everyday harmless kinds here.
        "blocked_by_kind": _grouped(np.array([d == "block" for d in decisions]), kinds, rate="blocked"),
        "decisions": {
            # Of prohibited items, how many were blocked or at least sent to review; of harmless ones, how many were not.
            "prohibited_blocked": _rate([d == "block" for d, p in zip(decisions, is_prohibited) if p]),
            "prohibited_flagged": _rate([d != "allow" for d, p in zip(decisions, is_prohibited) if p]),
            "harmless_blocked": _rate([d == "block" for d, p in zip(decisions, is_prohibited) if not p]),
            "harmless_flagged": _rate([d != "allow" for d, p in zip(decisions, is_prohibited) if not p]),
        },
    }


def format_report(metrics: Mapping[str, object]) -> str:
    """The metrics as a short plain-text table for a terminal."""
    lines = [f"photos {metrics['photos']}  accuracy {metrics['accuracy']}  ECE {metrics['expected_calibration_error']}"]
    for label, values in metrics["per_label"].items():
        lines.append(f"  {label:<20} precision {values['precision']}  recall {values['recall']}  f1 {values['f1']}")
    for title in ("accuracy_by_source", "accuracy_by_kind"):
        lines.append(title.replace("_", " ") + ":")
        lines += [f"  {name:<20} {value['accuracy']}  (n={value['photos']})" for name, value in metrics[title].items()]
    lines.append("decisions: " + "  ".join(f"{key} {value}" for key, value in metrics["decisions"].items()))
    return "\n".join(lines)


def _rate(flags: Sequence[bool] | np.ndarray) -> float | None:
    return round(float(np.mean(flags)), 4) if len(flags) else None


def _label_metrics(predicted: np.ndarray, targets: np.ndarray, index: int) -> dict[str, float | int]:
    true_positive = int(((predicted == index) & (targets == index)).sum())
    precision = true_positive / max(1, int((predicted == index).sum()))
    recall = true_positive / max(1, int((targets == index).sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "photos": int((targets == index).sum())}


def _grouped(flags: np.ndarray, keys: Sequence[str], *, rate: str = "accuracy") -> dict[str, dict[str, float | int]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, flag in zip(keys, flags):
        groups[key].append(bool(flag))
    return {key: {rate: _rate(values), "photos": len(values)} for key, values in sorted(groups.items())}
