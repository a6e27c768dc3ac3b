"""One self-contained HTML page showing how a model does on held-out photos: `write_report(evaluation, info, path)`.

Plots are embedded as PNGs and the gallery's thumbnails as JPEGs, with no scripts and no links to fetch, so a report
can be attached to a review, mailed or opened offline long after the data has moved and still show what it showed.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from training.errors import MissingDependencyError

try:
    # The object-oriented API with an explicit Agg canvas: no pyplot state and no process-wide backend switch.
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError:
    raise MissingDependencyError("the evaluation report needs matplotlib: pip install '.[train]'") from None

from training.audit import rank_doubts
from training.calibration import expected_calibration_error, softmax
from training.data import Sample
from training.evaluation import Evaluation
from training.gallery import document, escape, image, section, table
from training.gallery import figure as photo_figure
from training.metrics import Curve, precision_recall_curve, roc_curve, wilson_interval
from wildvision.model_info import ModelInfo

__all__ = ["write_report"]

GALLERY_SIZE = 12  # photos per gallery: enough to see a pattern in the mistakes, few enough to keep the file small
OPEN_WORLD_GALLERY_SIZE = 30  # the harmless photos closest to being flagged: where the next false alarms come from
THUMBNAIL_SIDE = 160  # pixels, longer side
CALIBRATION_BINS = 15  # the same equal-width confidence bins as expected_calibration_error

_DECISIONS = {
    "prohibited_blocked": "prohibited photos blocked",
    "prohibited_flagged": "prohibited photos sent to review or blocked",
    "harmless_blocked": "harmless photos blocked",
    "harmless_flagged": "harmless photos sent to review or blocked",
}

def write_report(evaluation: Evaluation, info: ModelInfo, path: Path) -> None:
    """Write the report of `evaluation`, a measurement of the model `info` describes, to `path` as one HTML file."""
    labels = list(info.labels)
    targets = np.array([labels.index(s.label) for s in evaluation.samples])
    predicted = evaluation.probabilities.argmax(axis=1)
    sections = [
        _header(evaluation, info),
        _per_labelsection(evaluation.metrics, info),
        _confusionsection(targets, predicted, labels),
        _curvessection(evaluation.probabilities, targets, info),
        _calibrationsection(evaluation, targets, info.temperature),
        _operating_pointssection(info, evaluation.metrics),
        _open_worldsection(evaluation, info),
        _sourcessection(evaluation.metrics),
        _kindssection(evaluation.samples, predicted == targets),
        _gallerysection(evaluation, targets, info),
        _doubtssection(evaluation, info),
        _provenancesection(info),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document(f"{info.full_name} evaluation report", "\n".join(sections)), encoding="utf-8")


def _header(evaluation: Evaluation, info: ModelInfo) -> str:
    samples = evaluation.samples
    facts = {
        "model": info.full_name,
        "photos under": os.path.commonpath([str(s.path) for s in samples]),
        "split": ", ".join(sorted({s.split for s in samples})),
        "photos scored": len(samples),
        "unreadable, left out": len(evaluation.unreadable),
        "accuracy": evaluation.metrics["accuracy"],
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    unreadable = "".join(f"<li>{escape(message)}</li>" for message in evaluation.unreadable)
    listing = f"<details><summary>unreadable photos</summary><ul>{unreadable}</ul></details>" if unreadable else ""
    return f"<h1>{escape(info.full_name)}: evaluation report</h1>\n{table((), facts.items())}{listing}"


def _per_labelsection(metrics: Mapping[str, object], info: ModelInfo) -> str:
    rows = [
        (label, "yes" if label in info.operating_points else "no", values["photos"],
         values["precision"], values["recall"], values["f1"])
        for label, values in metrics["per_label"].items()
    ]
    shown = table(("label", "prohibited", "photos", "precision", "recall", "F1"), rows, table_id="per-label")
    return section("Per-label metrics", "Of the top label (highest calibrated score) per photo.", shown)


def _confusionsection(targets: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> str:
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(matrix, (targets, predicted), 1)
    rows = [(f"true {label}", *counts) for label, counts in zip(labels, matrix.tolist())]
    shown = table(("", *(f"predicted {label}" for label in labels)), rows, table_id="confusion")
    return section("Confusion matrix", "Photos counted by true label (rows) and top label (columns).",
                    _plot(_confusion_figure(matrix, labels), "confusion matrix") + shown)


def _confusion_figure(matrix: np.ndarray, labels: Sequence[str]) -> Figure:
    side = 2.5 + 0.6 * len(labels)  # inches: room for the tick labels plus a cell per label
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2  # white text on the darker cells
        axes.text(column, row, str(count), ha="center", va="center", color="white" if dark else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted (top label)")
    axes.set_ylabel("true label")
    return figure


def _curvessection(probabilities: np.ndarray, targets: np.ndarray, info: ModelInfo) -> str:
    curves, rows, missing = {}, [], []
    for label in info.operating_points:
        index = info.labels.index(label)
        is_positive = targets == index
        if is_positive.all() or not is_positive.any():
            missing.append(label)
            continue
        roc = roc_curve(probabilities[:, index], is_positive)
        pr = precision_recall_curve(probabilities[:, index], is_positive)
        curves[label] = roc, pr
        rows.append((label, int(is_positive.sum()), int((~is_positive).sum()), roc.area, pr.area))
    note = "Each prohibited label against all other labels, ranked by its calibrated score."
    if missing:
        note += f" No curve for {', '.join(missing)}: the split lacks either its photos or all others."
    plot = _plot(_curves_figure(curves), "ROC and precision-recall curves") if curves else ""
    shown = table(("label", "positives", "negatives", "ROC AUC", "average precision"), rows, table_id="curves")
    return section("ROC and precision-recall curves", note, plot + shown)


def _curves_figure(curves: Mapping[str, tuple[Curve, Curve]]) -> Figure:
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    roc_axes, pr_axes = figure.subplots(1, 2)
    for label, (roc, pr) in curves.items():
        roc_axes.plot(roc.x, roc.y, label=f"{label} (AUC {roc.area:.3f})")
        pr_axes.plot(pr.x, pr.y, label=f"{label} (AP {pr.area:.3f})")
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    limits = {"xlim": (-0.01, 1.01), "ylim": (-0.01, 1.02)}  # a margin keeps curves along an edge visible
    roc_axes.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate", **limits)
    pr_axes.set(title="precision-recall", xlabel="recall", ylabel="precision", **limits)
    roc_axes.legend(loc="lower right")
    pr_axes.legend(loc="lower left")
    for axes in (roc_axes, pr_axes):
        axes.grid(alpha=0.3)
    return figure


def _calibrationsection(evaluation: Evaluation, targets: np.ndarray, temperature: float) -> str:
    before, after = softmax(evaluation.logits), evaluation.probabilities
    errors = [expected_calibration_error(p, targets, CALIBRATION_BINS) for p in (before, after)]
    titles = ("before calibration", f"after calibration (T = {temperature:.3f})")
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    for axes, probabilities, error, title in zip(figure.subplots(1, 2), (before, after), errors, titles):
        _reliability_diagram(axes, probabilities, targets, f"{title}, ECE {error:.4f}")
    note = (f"Accuracy of the top label against its score, in {CALIBRATION_BINS} equal-width bins; a calibrated model "
            f"follows the diagonal. Expected calibration error before: {errors[0]:.4f}, after: {errors[1]:.4f}.")
    return section("Calibration", note, _plot(figure, "reliability diagrams before and after calibration"))


def _reliability_diagram(axes: Axes, probabilities: np.ndarray, targets: np.ndarray, title: str) -> None:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    # Bins are (low, high], matching expected_calibration_error: a confidence exactly on an edge goes to the lower bin.
    bin_of = np.clip(np.ceil(confidence * CALIBRATION_BINS).astype(int) - 1, 0, CALIBRATION_BINS - 1)
    counts = np.bincount(bin_of, minlength=CALIBRATION_BINS)
    hits = np.bincount(bin_of, weights=correct, minlength=CALIBRATION_BINS)
    filled = counts > 0
    lows = np.arange(CALIBRATION_BINS) / CALIBRATION_BINS
    bars = axes.bar(lows[filled], hits[filled] / counts[filled], width=1 / CALIBRATION_BINS, align="edge",
                    edgecolor="black", alpha=0.7, label="accuracy (photos above each bar)")
    axes.bar_label(bars, labels=[str(count) for count in counts[filled]], fontsize=8)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.set(title=title, xlabel="score of the top label", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.12))
    axes.legend(loc="upper left", fontsize=8)


def _operating_pointssection(info: ModelInfo, metrics: Mapping[str, object]) -> str:
    # Six decimals: a block threshold can sit a hair under 1, which four would round to 1.0000.
    points = [(label, f"{point.review:.6f}", f"{point.block:.6f}") for label, point in info.operating_points.items()]
    decisions = [(_DECISIONS.get(key, key), rate) for key, rate in metrics["decisions"].items()]
    note = ("A photo is sent to review when a prohibited label's calibrated score reaches its review threshold, and "
            "blocked when it reaches the block threshold. Rates are over this split's photos.")
    body = (table(("prohibited label", "review at", "block at"), points, table_id="operating-points")
            + table(("decision", "rate"), decisions, table_id="decisions"))
    return section("Operating points and decisions", note, body)


def _open_worldsection(evaluation: Evaluation, info: ModelInfo) -> str:
    """Where the thresholds flag harmless photos, per data source, source and kind; what they catch; the near misses."""
    metrics = evaluation.metrics
    harmless_columns = ("harmless photos", "flagged (95 % interval)", "blocked (95 % interval)")
    parts = []
    for title, key, table_id in (("by data source", "decisions_by_dataset", "open-world-datasets"),
                                 ("by source", "decisions_by_source", "open-world-sources")):
        rows = [(name, *_harmless_cells(values)) for name, values in metrics[key].items() if values["harmless"]]
        parts.append(f"<h3>Harmless photos flagged, {title}</h3>\n"
                     + table((title.split()[-1], *harmless_columns), rows, table_id=table_id))
    kinds = [(name, *_harmless_cells(values), values["harmless_flagged"])
             for name, values in metrics["decisions_by_kind"].items() if values["harmless"]]
    kinds.sort(key=lambda row: (-row[-1], row[0]))
    parts.append("<h3>Harmless photos flagged, by kind (most flagged first)</h3>\n"
                 + table(("kind", *harmless_columns), [row[:-1] for row in kinds], table_id="open-world-kinds"))
    recall = [(name, values["prohibited"], _with_interval(values["prohibited_flagged"], values["prohibited"]),
               _with_interval(values["prohibited_blocked"], values["prohibited"]))
              for name, values in metrics["decisions_by_source"].items() if values["prohibited"]]
    parts.append("<h3>Prohibited photos caught at these thresholds, by source</h3>\n"
                 + table(("source", "prohibited photos", "sent at least to review", "blocked"), recall,
                          table_id="open-world-recall"))
    parts.append(f"<h3>The {OPEN_WORLD_GALLERY_SIZE} harmless photos with the highest scores</h3>\n"
                 + _nearest_false_alarms(evaluation, info))
    note = ("A marketplace sees mostly harmless photos of every kind: these tables show how many of them the shipped "
            "thresholds send to review (flagged: review or block) or block, and how much of each source's prohibited "
            "photos the same thresholds catch. Intervals are 95 % Wilson intervals: a rate on few photos is a rough one.")
    return section("Open world", note, "\n".join(parts))


def _harmless_cells(values: Mapping[str, object]) -> tuple[object, str, str]:
    photos = values["harmless"]
    return photos, _with_interval(values["harmless_flagged"], photos), _with_interval(values["harmless_blocked"], photos)


def _with_interval(rate: float | None, photos: int) -> str:
    """`0.0125 (0.0051–0.0301)`, or n/a where there is nothing to take the rate over."""
    interval = wilson_interval(rate, photos)
    return "n/a" if interval is None else f"{rate:.4f} ({interval[0]:.4f}–{interval[1]:.4f})"


def _nearest_false_alarms(evaluation: Evaluation, info: ModelInfo) -> str:
    """Harmless photos ranked by their highest prohibited score: the false alarms a lower threshold would add."""
    prohibited = [info.labels.index(label) for label in info.operating_points]
    harmless = np.flatnonzero([s.label not in info.operating_points for s in evaluation.samples])
    if not len(harmless) or not prohibited:
        return '<p class="note">None.</p>'
    scores = evaluation.probabilities[harmless][:, prohibited]
    order = harmless[np.argsort(-scores.max(axis=1), kind="stable")][:OPEN_WORLD_GALLERY_SIZE]
    figures = []
    for index in order:
        row = evaluation.probabilities[index]
        best = max(prohibited, key=lambda label_index: row[label_index])
        figures.append(_figure(evaluation.samples[index], _caption(evaluation.samples[index], info.labels[best], row[best])))
    return '<div class="gallery" id="open-world-gallery">' + "".join(figures) + "</div>"


def _caption(sample: Sample, label: str, score: float) -> str:
    """What a reader needs to find and judge a thumbnail: the score, what the photo is, where it came from."""
    kind = f"{sample.kind}, " if sample.kind and sample.kind != sample.label else ""
    return (f"{escape(label)} {score:.3f}<br>{escape(sample.label)} ({escape(kind)}{escape(sample.source)})"
            f"<br><small>{escape(_short_path(sample))}</small>")


def _short_path(sample: Sample) -> str:
    """The photo's path from its data source's folder on: enough to find it, short enough to caption."""
    parts = sample.path.parts
    return "/".join(parts[parts.index(sample.dataset):]) if sample.dataset in parts else str(sample.path)


def _sourcessection(metrics: Mapping[str, object]) -> str:
    parts = []
    for title, key in (("data source", "accuracy_by_dataset"), ("source", "accuracy_by_source")):
        rows = [(name, values["photos"], _with_interval(values["accuracy"], values["photos"]))
                for name, values in metrics[key].items()]
        parts.append(table((title, "photos", "accuracy (95 % interval)"), rows, table_id=key.replace("_", "-")))
    note = "Top-label accuracy per data source and per source within them."
    return section("Accuracy by source", note, "".join(parts))


def _kindssection(samples: Sequence[Sample], correct: np.ndarray) -> str:
    groups: dict[str, list[bool]] = defaultdict(list)
    for sample, flag in zip(samples, correct):  # as in metrics, a photo without a kind counts under its label
        groups[sample.kind or sample.label].append(bool(flag))
    rows = [(kind, len(flags), float(np.mean(flags)), flags.count(False)) for kind, flags in groups.items()]
    rows.sort(key=lambda row: (row[2], -row[3], row[0]))
    rows = [(kind, photos, _with_interval(accuracy, photos), errors) for kind, photos, accuracy, errors in rows]
    note = "Top-label accuracy per kind of photo, worst first, with 95 % Wilson intervals."
    shown = table(("kind", "photos", "accuracy (95 % interval)", "errors"), rows, table_id="kinds")
    return section("Errors by kind", note, shown)


def _provenancesection(info: ModelInfo) -> str:
    """How the model was made: its training options, each data source's fingerprint, and the loss per epoch."""
    training = info.training
    config = training.get("config", {})
    settings = [(key, _setting(value)) for key, value in sorted(config.items()) if key not in ("data", "config")]
    datasets = training.get("data", {}).get("datasets", {})
    sources = [(name, values.get("photos"), values.get("manifest_sha256", "")[:16]) for name, values in datasets.items()]
    losses = [(epoch, loss) for epoch, loss in enumerate(training.get("history", {}).get("loss", []), start=1)]
    body = (table((), [("architecture", training.get("architecture")), ("trained", training.get("created")),
                        ("parent model", training.get("parent") or "none (ImageNet weights)")])
            + "<h3>Data sources</h3>\n" + table(("source", "photos", "fingerprint (SHA-256, first 16)"), sources,
                                                table_id="provenance-data")
            + "<h3>Mean training loss per epoch</h3>\n" + table(("epoch", "loss"), losses, table_id="provenance-loss")
            + "<details><summary>training options</summary>" + table(("option", "value"), settings) + "</details>")
    return section("How this model was trained", "As recorded in the model file.", body)


def _setting(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _gallerysection(evaluation: Evaluation, targets: np.ndarray, info: ModelInfo) -> str:
    probabilities, parts = evaluation.probabilities, []
    predicted = probabilities.argmax(axis=1)
    for label in info.operating_points:
        index = info.labels.index(label)
        scores = probabilities[:, index]
        false_positives = np.flatnonzero((predicted == index) & (targets != index))
        false_negatives = np.flatnonzero((predicted != index) & (targets == index))
        worst = {  # most confident wrong first: the highest score among false alarms, the lowest among misses
            f"{label}: false positives": false_positives[np.argsort(-scores[false_positives], kind="stable")],
            f"{label}: false negatives": false_negatives[np.argsort(scores[false_negatives], kind="stable")],
        }
        for title, indices in worst.items():
            parts.append(f"<h3>{escape(title)}</h3>\n" + _gallery(evaluation, indices[:GALLERY_SIZE], label, info))
    note = (f"Up to {GALLERY_SIZE} photos each, most confident mistake first. A false positive is another label's "
            "photo whose top label is the prohibited one; a false negative is the reverse. The score is the "
            "prohibited label's calibrated score.")
    return section("Worst mistakes", note, "\n".join(parts))


def _doubtssection(evaluation: Evaluation, info: ModelInfo) -> str:
    doubts = rank_doubts(evaluation, info.labels)[:GALLERY_SIZE]
    figures = []
    for doubt in doubts:
        sample = doubt.sample
        caption = (f"{escape(sample.path.name)}<br>given: {escape(sample.label)} ({doubt.label_score:.3f})"
                   f"<br>model: {escape(doubt.top_label)} ({doubt.top_score:.3f})"
                   + (f"<br><i>{escape(sample.description[:120])}</i>" if sample.description else ""))
        figures.append(_figure(sample, caption))
    note = (f"The {GALLERY_SIZE} photos whose given label the model believes least, of every label. Some are model "
            "mistakes, some are wrong labels: check them. `--audit FILE.csv` writes the whole ranking.")
    return section("Doubtful labels", note, '<div class="gallery" id="doubts">' + "".join(figures) + "</div>")


def _gallery(evaluation: Evaluation, indices: np.ndarray, label: str, info: ModelInfo) -> str:
    if not len(indices):
        return '<p class="note">None.</p>'
    figures = []
    for index in indices:
        sample, scores = evaluation.samples[index], evaluation.probabilities[index]
        figures.append(_figure(sample, _caption(sample, label, scores[info.labels.index(label)])))
    return '<div class="gallery">' + "".join(figures) + "</div>"


def _figure(sample: Sample, caption: str) -> str:
    return photo_figure(sample.path, caption, THUMBNAIL_SIDE)


def _plot(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return image("png", buffer.getvalue(), alt, css_class="plot")
