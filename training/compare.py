"""Two models side by side on photos neither was fitted on: did adapting help, and what did it cost?

`python -m training.compare BASE.onnx NEW.onnx --data HELD_OUT [--data ...] [--operating-points FILE] [--html OUT]`

Per label: AUC (ranking, free of thresholds) and, for prohibited labels, recall at the operating points (each
model's own, or one platform's `--operating-points` applied to both); on harmless photos, how many each model flags
(review or block) and blocks, overall and per source; and the photos whose decision changed, as thumbnails in the
HTML report. All photos given are scored, whatever split the data names: give photos held out of both models.

Where the base model has reference data (`training.reference`) and the candidate shares its network, both models'
shares of the reference's everyday photos flagged and blocked are shown too: the open-world cost of the candidate's
thresholds before it ships, on the reference's `calib` photos (those thresholds were bounded on) and its `val` photos
(held out of every fit).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from training.calibration import flag_rates, softmax
from training.data import DataSource, Sample, label_sources, parse_relabel
from training.errors import ConfigError, DataError, run_command
from training.features import compute_features
from training.gallery import cell_text as _text  # a value as the HTML tables show it
from training.gallery import escape, figure, page, table
from training.metrics import auc, fraction
from training.options import check_ranges, option, parse
from training.onnx_head import HeadNotReadable, network_digest, read_head
from training.reference import ReferenceData, find_reference
from wildvision.classifier import Classifier
from wildvision.decision import decide
from wildvision.model_info import OperatingPoint, OperatingPointError, read_operating_points

__all__ = ["Comparison", "Scored", "compare_scores", "format_comparison", "main"]

_CHANGED_SHOWN = 60  # thumbnails per kind of change in the HTML report


@dataclass(frozen=True)
class Scored:
    """One model's calibrated scores of the same photos, and the thresholds that turn them into decisions."""

    name: str
    labels: tuple[str, ...]
    probabilities: np.ndarray  # (photos, labels)
    operating_points: Mapping[str, OperatingPoint]

    def decisions(self) -> list[str]:
        return [decide(dict(zip(self.labels, row)), self.operating_points) for row in self.probabilities]


@dataclass(frozen=True)
class Comparison:
    models: tuple[str, str]
    per_label: dict[str, dict[str, object]]  # label -> {"auc": (a, b), "photos": n, "recall_flagged": (a, b), ...}
    harmless: dict[str, dict[str, object]]  # source ("all" first) -> {"photos": n, "flagged": (a, b), "blocked": (a, b)}
    accuracy: tuple[float | None, float | None]  # on photos whose label the model knows
    changed: dict[str, list[int]]  # kind of change -> photo positions


def compare_scores(samples: Sequence[Sample], first: Scored, second: Scored) -> Comparison:
    labels = sorted({s.label for s in samples})
    prohibited = set(first.operating_points) | set(second.operating_points)
    decisions = (first.decisions(), second.decisions())
    is_harmless = np.array([s.label not in prohibited for s in samples])
    per_label = {label: _label_row(samples, label, first, second, decisions) for label in labels}
    sources = ["all"] + sorted({s.source or "unknown" for s, h in zip(samples, is_harmless) if h})
    harmless = {source: _harmless_row(samples, is_harmless, source, decisions) for source in sources}
    harmless = {source: row for source, row in harmless.items() if row["photos"]}
    return Comparison((first.name, second.name), per_label, harmless,
                      (_accuracy(samples, first), _accuracy(samples, second)),
                      _changed(samples, is_harmless, decisions))


def _label_row(
    samples: Sequence[Sample], label: str, first: Scored, second: Scored, decisions: tuple[list[str], list[str]]
) -> dict[str, object]:
    is_label = np.array([s.label == label for s in samples])
    row: dict[str, object] = {"photos": int(is_label.sum()), "auc": tuple(
        auc(model.probabilities[:, model.labels.index(label)], is_label) if label in model.labels else None
        for model in (first, second))}
    if label in first.operating_points or label in second.operating_points:
        caught = [[d for d, hit in zip(ds, is_label) if hit] for ds in decisions]
        row["recall_flagged"] = tuple(fraction([d != "allow" for d in ds]) for ds in caught)
        row["recall_blocked"] = tuple(fraction([d == "block" for d in ds]) for ds in caught)
    return row


def _harmless_row(
    samples: Sequence[Sample], is_harmless: np.ndarray, source: str, decisions: tuple[list[str], list[str]]
) -> dict[str, object]:
    members = [i for i, s in enumerate(samples) if is_harmless[i] and source in ("all", s.source or "unknown")]
    return {"photos": len(members),
            "flagged": tuple(fraction([ds[i] != "allow" for i in members]) for ds in decisions),
            "blocked": tuple(fraction([ds[i] == "block" for i in members]) for ds in decisions)}


def _accuracy(samples: Sequence[Sample], model: Scored) -> float | None:
    known = [i for i, s in enumerate(samples) if s.label in model.labels]
    hits = [model.labels[int(model.probabilities[i].argmax())] == samples[i].label for i in known]
    return fraction(hits)


def _changed(
    samples: Sequence[Sample], is_harmless: np.ndarray, decisions: tuple[list[str], list[str]]
) -> dict[str, list[int]]:
    """Photos whose decision moved, by whether the move was right: caught, missed, new or removed false alarms."""
    changed: dict[str, list[int]] = {"now caught": [], "now missed": [], "new false alarm": [],
                                     "false alarm removed": []}
    for i, (before, after) in enumerate(zip(*decisions)):
        if (before == "allow") == (after == "allow"):
            continue
        flagged_now = after != "allow"
        if is_harmless[i]:
            changed["new false alarm" if flagged_now else "false alarm removed"].append(i)
        else:
            changed["now caught" if flagged_now else "now missed"].append(i)
    return changed


def format_comparison(comparison: Comparison) -> str:
    first, second = comparison.models
    lines = [f"A = {first}", f"B = {second}",
             f"accuracy (photos of labels each model knows): A {comparison.accuracy[0]}  B {comparison.accuracy[1]}",
             f"{'label':<20} {'photos':>6}  {'AUC A':>7} {'AUC B':>7}  {'flagged A':>9} {'flagged B':>9}  "
             f"{'blocked A':>9} {'blocked B':>9}"]
    for label, row in comparison.per_label.items():
        recall = [*row.get("recall_flagged", ("", "")), *row.get("recall_blocked", ("", ""))]
        lines.append(f"{label:<20} {row['photos']:>6}  {_text(row['auc'][0]):>7} {_text(row['auc'][1]):>7}  "
                     f"{_text(recall[0]):>9} {_text(recall[1]):>9}  {_text(recall[2]):>9} {_text(recall[3]):>9}")
    lines.append("harmless photos flagged (review or block) / blocked:")
    for source, row in comparison.harmless.items():
        lines.append(f"  {source:<18} {row['photos']:>6}  A {_text(row['flagged'][0])} / {_text(row['blocked'][0])}"
                     f"  B {_text(row['flagged'][1])} / {_text(row['blocked'][1])}")
    lines.append("decisions changed (allow <-> review/block): "
                 + ", ".join(f"{kind} {len(items)}" for kind, items in comparison.changed.items()))
    return "\n".join(lines)


def write_html(comparison: Comparison, samples: Sequence[Sample], path: Path) -> None:
    first, second = comparison.models
    label_rows = [[label, row["photos"], *row["auc"], *row.get("recall_flagged", (None, None)),
                   *row.get("recall_blocked", (None, None))] for label, row in comparison.per_label.items()]
    harmless_rows = [[source, row["photos"], *row["flagged"], *row["blocked"]]
                     for source, row in comparison.harmless.items()]
    sections = [
        ("Models", "A is the base, B the candidate; both scored the same photos.",
         table(["", "model", "accuracy"], [["A", first, comparison.accuracy[0]], ["B", second, comparison.accuracy[1]]])),
        ("Per label", "AUC ranks photos of the label above the rest, whatever the thresholds; flagged and blocked are "
                      "the shares of the label's photos sent to review or blocked at the operating points.",
         table(["label", "photos", "AUC A", "AUC B", "flagged A", "flagged B", "blocked A", "blocked B"], label_rows)),
        ("Harmless photos", "Shares of harmless photos flagged and blocked: the reviewers' load and the wrongly "
                            "removed listings.",
         table(["source", "photos", "flagged A", "flagged B", "blocked A", "blocked B"], harmless_rows)),
    ]
    for kind, items in comparison.changed.items():
        shown = "".join(figure(samples[i].path, escape(f"{samples[i].label} · {samples[i].path.name}"))
                        for i in items[:_CHANGED_SHOWN])
        sections.append((f"{kind} ({len(items)})", f"Photos whose decision moved between allow and review/block "
                         f"({min(len(items), _CHANGED_SHOWN)} shown).", f'<div class="gallery">{shown}</div>'))
    path.write_text(page(f"{first} vs {second}", sections), encoding="utf-8")


@dataclass(frozen=True)
class CompareConfig:
    """The two models, the labelled photos they are compared on, and what to write."""

    base: Path | None = option(None, "model A (.onnx), usually the released model", changes_weights=False,
                               positional=True)
    candidate: Path | None = option(None, "model B (.onnx), e.g. training.adapt's output", changes_weights=False,
                                    positional=True)
    data: tuple[Path, ...] = option((), "labelled photos neither model was fitted on (folder per label or CSV); "
                                        "repeatable; required", changes_weights=False, repeatable=True)
    relabel: tuple[str, ...] = option((), "give photos of a `kind` their own label, e.g. horn_antler=lookalike",
                                      changes_weights=False, metavar="KIND=LABEL")
    operating_points: Path | None = option(None, "a platform's thresholds (JSON/TOML) for both models",
                                           changes_weights=False)
    html: Path | None = option(None, "also write the comparison as a self-contained HTML report",
                               changes_weights=False)
    work: Path | None = option(None, "feature cache (default: none)", changes_weights=False)
    reference: Path | None = option(None, "the base model's reference vectors (default: BASE.reference.npz beside "
                                          "it)", changes_weights=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data: required")
        check_ranges(self)


def parse_args(argv: Sequence[str] | None) -> CompareConfig:
    return parse(CompareConfig, argv, prog="python -m training.compare", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: _compare(parse_args(argv)))


def _compare(args: CompareConfig) -> int:
    samples = label_sources([DataSource(path) for path in args.data], parse_relabel(args.relabel))
    missing = [str(s.path) for s in samples if not s.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} photo(s) not found, e.g. {missing[:3]}")
    policy = read_operating_points(args.operating_points) if args.operating_points else None  # checked per model below
    models = [Classifier(path) for path in (args.base, args.candidate)]
    unknown = sorted({s.label for s in samples} - set(models[0].info.labels) - set(models[1].info.labels))
    if unknown:
        raise DataError(f"labels {unknown} in the data are known to neither model")
    first, second, kept = _score_both(models, samples, policy, args.work)
    comparison = compare_scores(kept, first, second)
    print(f"{len(kept)} photos: {dict(sorted(Counter(s.label for s in kept).items()))}")
    print(format_comparison(comparison))
    print(_open_world_lines(args, models, first, second))
    if args.html:
        write_html(comparison, kept, args.html)
        print(f"wrote {args.html}")
    return 0


def _score_both(
    models: list[Classifier], samples: list[Sample], policy: Mapping[str, OperatingPoint] | None, work: Path | None
) -> tuple[Scored, Scored, list[Sample]]:
    """Both models' scores of the photos both could read."""
    features = [compute_features(model, [s.path for s in samples], cache=work) for model in models]
    kept = sorted(set(features[0].kept) & set(features[1].kept))
    scored = []
    for model, found in zip(models, features):
        position = {photo: row for row, photo in enumerate(found.kept)}
        rows = [position[i] for i in kept]
        points = _policy_for(model, policy) if policy is not None else model.info.operating_points
        scored.append(Scored(f"{model.identity}", model.info.labels, model.probabilities(found.logits[rows]), points))
    return scored[0], scored[1], [samples[i] for i in kept]


def _open_world_lines(args: CompareConfig, models: list[Classifier], first: Scored, second: Scored) -> str:
    """Both models' shares of the base's reference everyday photos flagged / blocked, per role; or why not shown."""
    reference = find_reference(args.base, args.reference)
    if reference is None:
        return f"reference everyday photos: {args.base.name} has no reference data: the open world cannot be checked"
    try:
        if network_digest(args.candidate) != reference.network:
            return "reference everyday photos: not shown, the candidate's network is not the base's"
        heads = [read_head(model.model_path) for model in models]
    except HeadNotReadable as error:  # an int8 twin: its classifier is quantised, so reference vectors cannot be scored
        return f"reference everyday photos: not shown, a model's classifier cannot be read ({error})"
    lines = [f"reference everyday photos ({', '.join(reference.open_world_sources)}) flagged / blocked:"]
    for role in ("calib", "val"):
        rows = _everyday(reference.role(role), set(first.operating_points) | set(second.operating_points))
        rates = [flag_rates(softmax(head.logits(rows.embeddings), model.info.temperature),
                            scored.labels, scored.operating_points)
                 for head, model, scored in zip(heads, models, (first, second))]
        lines.append(f"  {role:<18} {len(rows):>6}  A {_text(round(rates[0][0], 4))} / {_text(round(rates[0][1], 4))}"
                     f"  B {_text(round(rates[1][0], 4))} / {_text(round(rates[1][1], 4))}")
    return "\n".join(lines)


def _everyday(reference: ReferenceData, prohibited: set[str]) -> ReferenceData:
    """The harmless rows of the sources that bound the base's review."""
    others = sorted(set(reference.sources.tolist()) - set(reference.open_world_sources))
    rows = reference.without_sources(others)
    return rows.without_labels(sorted(prohibited))


def _policy_for(model: Classifier, policy: Mapping[str, OperatingPoint]) -> dict[str, OperatingPoint]:
    """The platform's thresholds for the labels this model has (a new label is the candidate's alone)."""
    try:
        return model.info.checked_operating_points({k: v for k, v in policy.items() if k in model.info.labels})
    except OperatingPointError as error:
        raise DataError(f"--operating-points: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
