"""Choose the photos worth a reviewer's time, and turn their labels back into data that `training.adapt` reads.

`python -m training.select --photos FOLDER --count 300 --out TASK/` (or `--records scan.jsonl` with `--root`, the
folder that scan read) embeds and scores the pool with the model and picks:

- **the pool in miniature**: the whole pool is clustered by embedding into as many groups as photos wanted, and each
  group gives its most typical photo (the one in the densest neighbourhood, as TypiClust does), so a few hundred
  labels cover the pool's variety in proportion and keep its label mix. At such budgets this beat choosing the
  model's least sure photos, which skews the labels towards look-alikes and made adapting hold back (README,
  "What it does on the shared data");
- **optionally, a slice of confident positives** (`--positive-share`, default none): photos the model would flag
  most surely, spread the same way, to check what it already blocks; they skew the label mix too.

TASK/ gets `labels.csv` (fill in `label`; delete rows you cannot judge), `contact_sheet.html` (self-contained), and
`label_studio_tasks.json` with `label_studio_config.xml` (import both into a Label Studio project). Its JSON export
comes back as a CSV with `python -m training.select --from-label-studio EXPORT.json --out labels.csv`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.errors import ConfigError, DataError, run_command
from training.features import compute_features
from training.gallery import data_uri, escape, figure, page
from training.options import AT_LEAST_1, SHARE, check_ranges, option, parse
from wildvision.classifier import Classifier
from wildvision.records import read_records
from wildvision.scan import find_images

__all__ = ["Choice", "choose", "confident_positives", "main", "read_label_studio", "spread_choice", "typicality"]

POSITIVE_POOL = 4  # confident positives are spread over the surest `POSITIVE_POOL x wanted`: sure, still varied
TYPICAL_NEIGHBOURS = 20  # TypiClust's k: a photo's typicality is its inverse mean distance to this many neighbours
LABEL_STUDIO_SIDE = 512  # px: enough for a reviewer to judge, small enough for a task file of hundreds of photos
_KMEANS_ROUNDS = 15
_DISTANCE_ROWS = 1024  # rows of the pool-by-pool distance matrix held at once: memory stays linear in the pool
REASONS = {"typical": "Each stands for a group of similar photos in the pool (the most typical of its group), so "
                      "together they show the pool in miniature.",
           "confident_positive": "The model would flag these most surely: check that it is right."}


@dataclass(frozen=True)
class Choice:
    index: int  # position in the pool
    reason: str  # a key of REASONS


_SOURCES = ("photos", "records", "from_label_studio")  # exactly one: where the photos to choose from come from


@dataclass(frozen=True)
class SelectConfig:
    """Where the photos come from (one of `_SOURCES`), the model to select for, how many, and where the tasks go."""

    photos: Path | None = option(None, "a folder of unlabelled photos (searched recursively)", changes_weights=False)
    records: Path | None = option(None, "wildvision scan records (.jsonl, .csv or .parquet)", changes_weights=False)
    from_label_studio: Path | None = option(None, "turn a Label Studio JSON export into a labels CSV at --out",
                                            changes_weights=False, metavar="EXPORT.json")
    root: Path | None = option(None, "with --records, the folder the scan read (default: the records file's folder); "
                                     "with --from-label-studio, the task folder select wrote (default: the export's "
                                     "folder)", changes_weights=False)
    model: Path | None = option(None, "the model to select for (default: the shipped model)", changes_weights=False)
    count: int = option(300, "photos to choose", changes_weights=False, bounds=AT_LEAST_1)
    positive_share: float = option(0.0, "share of the photos to spend on confident positives, to check what the model "
                                        "flags", changes_weights=False, bounds=SHARE)
    out: Path | None = option(None, "task folder (or the CSV with --from-label-studio); required",
                              changes_weights=False)
    work: Path | None = option(None, "feature cache (default: OUT/.cache)", changes_weights=False)
    seed: int = option(0, "seed of the diverse choice", changes_weights=False)

    def __post_init__(self) -> None:
        given = [f"--{name.replace('_', '-')}" for name in _SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            both = f", not {len(given)} ({' and '.join(given)})" if given else ""
            raise ConfigError(f"give one of --photos, --records or --from-label-studio{both}")
        if self.out is None:
            raise ConfigError("--out: required")
        check_ranges(self)


def parse_args(argv: Sequence[str] | None) -> SelectConfig:
    return parse(SelectConfig, argv, prog="python -m training.select", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        args = parse_args(argv)
        return _from_label_studio(args) if args.from_label_studio else _select(args)

    return run_command(command)


def choose(
    embeddings: np.ndarray, probabilities: np.ndarray, prohibited: Sequence[int], count: int, *,
    positive_share: float = 0.0, seed: int = 0,
) -> list[Choice]:
    """Up to `count` pool positions: the most typical photo of each of as many embedding clusters, after a slice
    (`positive_share`) of confident positives."""
    count = min(count, len(probabilities))
    flagged = probabilities[:, list(prohibited)].max(axis=1) if prohibited else np.zeros(len(probabilities))
    positive = confident_positives(embeddings, flagged, round(count * positive_share), seed=seed)
    rest = np.setdiff1d(np.arange(len(probabilities)), positive)
    typical = rest[spread_choice(embeddings[rest], -typicality(embeddings[rest]), count - len(positive), seed=seed)]
    return [Choice(int(i), "typical") for i in typical] + [Choice(int(i), "confident_positive") for i in positive]


def confident_positives(embeddings: np.ndarray, flagged: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """`count` rows the model would flag most surely (`flagged`: the top prohibited score), spread by embedding."""
    confident = np.flatnonzero(flagged >= 0.5)
    confident = confident[np.argsort(-flagged[confident])][: POSITIVE_POOL * count]
    return confident[spread_choice(embeddings[confident], -flagged[confident], count, seed=seed)]


def spread_choice(embeddings: np.ndarray, priority: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """`count` rows, one per k-means cluster of `embeddings`: each cluster's row of lowest `priority`."""
    if count <= 0 or len(embeddings) == 0:
        return np.zeros(0, dtype=int)
    if count >= len(embeddings):
        return np.argsort(priority)
    assignment = _kmeans(_unit(embeddings), count, np.random.default_rng(seed))
    chosen = [members[np.argmin(priority[members])] for cluster in np.unique(assignment)
              for members in [np.flatnonzero(assignment == cluster)]]
    return np.array(sorted(chosen, key=lambda i: priority[i]), dtype=int)


def typicality(embeddings: np.ndarray, neighbours: int = TYPICAL_NEIGHBOURS) -> np.ndarray:
    """TypiClust's typicality: the inverse mean (cosine-geometry) distance to a photo's nearest neighbours in the
    pool, high where many photos look alike."""
    unit = _unit(embeddings)
    neighbours = min(neighbours, len(unit) - 1)
    if neighbours < 1:
        return np.ones(len(unit))
    mean_distance = np.empty(len(unit))
    for start in range(0, len(unit), _DISTANCE_ROWS):
        distance = np.sqrt(np.maximum(2 - 2 * unit[start : start + _DISTANCE_ROWS] @ unit.T, 0))
        # the nearest "neighbour" at distance 0 is the photo itself: take one more and drop it
        nearest = np.partition(distance, neighbours, axis=1)[:, : neighbours + 1]
        mean_distance[start : start + len(distance)] = (nearest.sum(axis=1) - nearest.min(axis=1)) / neighbours
    return 1 / np.maximum(mean_distance, 1e-12)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster assignment by k-means with k-means++ seeding (cosine geometry: the rows are unit vectors)."""
    centres = [points[rng.integers(len(points))]]
    distance = np.full(len(points), np.inf)
    for _ in range(k - 1):
        distance = np.minimum(distance, ((points - centres[-1]) ** 2).sum(axis=1))
        centres.append(points[rng.choice(len(points), p=distance / distance.sum())] if distance.sum() > 0
                       else points[rng.integers(len(points))])
    centres = np.stack(centres)
    for _ in range(_KMEANS_ROUNDS):
        assignment = (points @ centres.T).argmax(axis=1)
        for cluster in range(k):
            members = points[assignment == cluster]
            if len(members):
                centres[cluster] = members.mean(axis=0)
    return (points @ centres.T).argmax(axis=1)


def _select(args: SelectConfig) -> int:
    classifier = Classifier(args.model)
    paths = _pool(args)
    if not paths:
        raise DataError("no photos to choose from")
    features = compute_features(classifier, paths, cache=args.work or args.out / ".cache")
    probabilities = classifier.probabilities(features.logits)
    prohibited = [classifier.info.labels.index(label) for label in classifier.info.prohibited]
    choices = choose(features.embeddings, probabilities, prohibited, args.count,
                     positive_share=args.positive_share, seed=args.seed)
    rows = [_row(paths[features.kept[c.index]], probabilities[c.index], c.reason, classifier, args.out)
            for c in choices]
    args.out.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out / "labels.csv", rows)
    _write_contact_sheet(args.out / "contact_sheet.html", rows, args.out)
    _write_label_studio(args.out, rows, classifier.info.labels, classifier.info.full_name)
    reasons = {reason: sum(row["reason"] == reason for row in rows) for reason in REASONS}
    print(f"chose {len(rows)} of {len(paths)} photos ({reasons}); fill in the label column of "
          f"{args.out / 'labels.csv'} or import {args.out / 'label_studio_tasks.json'} into Label Studio")
    return 0


def _pool(args: SelectConfig) -> list[Path]:
    if args.photos is not None:
        return [Path(item.file) for item in find_images(args.photos)]
    if not args.records.is_file():
        raise DataError(f"no records file at {args.records}")
    root = args.root or args.records.parent
    # Records of photos that could not be scored have no features either: they are left to the scan's error report.
    return [root / record["path"] for record in read_records(args.records) if not record.get("error")]


def _row(path: Path, probabilities: np.ndarray, reason: str, classifier: Classifier, out: Path) -> dict[str, str]:
    labels = classifier.info.labels
    flagged = max((probabilities[labels.index(label)] for label in classifier.info.prohibited), default=0.0)
    return {"path": Path(os.path.relpath(path.resolve(), out.resolve())).as_posix(), "label": "",
            "suggested": labels[int(probabilities.argmax())], "prohibited_score": f"{flagged:.4f}", "reason": reason}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]) if rows else ["path", "label"])
        writer.writeheader()
        writer.writerows(rows)


def _write_contact_sheet(path: Path, rows: list[dict[str, str]], out: Path) -> None:
    sections = []
    for reason, note in REASONS.items():
        chosen = [row for row in rows if row["reason"] == reason]
        body = "".join(figure(out / row["path"], escape(f"{row['path']} · suggested {row['suggested']} · "
                                                     f"{row['prohibited_score']}")) for row in chosen)
        sections.append((f"{reason.replace('_', ' ')} ({len(chosen)})", note, f'<div class="gallery">{body}</div>'))
    path.write_text(page("Photos to label", sections), encoding="utf-8")


def _write_label_studio(out: Path, rows: list[dict[str, str]], labels: Sequence[str], model: str) -> None:
    """Tasks with the photo inline (no storage to configure) and the model's suggestion as a pre-annotation."""
    tasks = [{"data": {"image": data_uri(out / row["path"], LABEL_STUDIO_SIDE), "path": row["path"],
                       "reason": row["reason"]},
              "predictions": [{"model_version": model, "score": float(row["prohibited_score"]),
                               "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                           "value": {"choices": [row["suggested"]]}}]}]}
             for row in rows]
    (out / "label_studio_tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
    choices = "".join(f'<Choice value="{label}"/>' for label in labels)
    (out / "label_studio_config.xml").write_text(
        f'<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single" '
        f'showInline="true">{choices}</Choices><Text name="path" value="$path"/></View>\n', encoding="utf-8")


def read_label_studio(export: Path) -> tuple[list[dict[str, str]], int]:
    """(path, label) rows from a Label Studio JSON export, and how many tasks had no usable answer.

    A task's last annotation that was not cancelled counts; a task skipped or left unlabelled is left out, so no
    unseen photo ever gets a label.
    """
    try:
        tasks = json.loads(export.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{export}: not a readable Label Studio JSON export ({error})") from None
    if not isinstance(tasks, list):
        raise DataError(f"{export}: a Label Studio JSON export is a list of tasks")
    rows, unanswered = [], 0
    for task in tasks:
        label = _answer(task)
        if label is None or "path" not in task.get("data", {}):
            unanswered += 1
            continue
        rows.append({"path": task["data"]["path"], "label": label})
    return rows, unanswered


def _answer(task: dict) -> str | None:
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    choices = [item["value"]["choices"] for item in (done[-1].get("result", []) if done else [])
               if item.get("type") == "choices" and item.get("value", {}).get("choices")]
    return choices[0][0] if choices else None


def _from_label_studio(args: SelectConfig) -> int:
    rows, unanswered = read_label_studio(args.from_label_studio)
    if not rows:
        raise DataError(f"{args.from_label_studio}: no labelled task in the export")
    # The tasks' paths are relative to the task folder: where the export sits beside it, rebase them on the CSV's.
    base = args.root or args.from_label_studio.parent
    for row in rows:
        row["path"] = Path(os.path.relpath((base / row["path"]).resolve(), args.out.parent.resolve())).as_posix()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out, rows)
    print(f"wrote {len(rows)} labelled photos to {args.out}; {unanswered} task(s) skipped or unlabelled left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
