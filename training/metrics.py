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

__all__ = ["format_report", "format_summary", "measure", "wilson_interval"]


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
        "accuracy": _rate(correct),
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
        "prohibited_blocked": _rate([d == "block" for d in prohibited]),
        "prohibited_flagged": _rate([d != "allow" for d in prohibited]),
        "harmless_blocked": _rate([d == "block" for d in harmless]),
        "harmless_flagged": _rate([d != "allow" for d in harmless]),
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


def _rate(flags: Sequence[bool] | np.ndarray) -> float | None:
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
    return {key: {rate: _rate(values), "photos": len(values)} for key, values in sorted(groups.items())}
