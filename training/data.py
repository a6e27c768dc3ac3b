"""Labelled photos from a folder-per-label tree or a CSV, split without leakage between groups.

A CSV needs `path` and `label` columns; optional columns are `group` (or `source_id`: one object, seller or listing,
never split across train and val), `split` (train/val), `kind` and `source` (used to break metrics down). A folder with
a `manifest.csv` is read as that CSV; any other folder is read as one sub-folder per label.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

from training.dedupe import DEFAULT_MAX_DISTANCE, hash_files, near_duplicate_pairs
from wildvision.scan import IMAGE_SUFFIXES

__all__ = ["Sample", "SplitReport", "assign_splits", "load_samples", "manifest_hash", "prepare_samples",
           "parse_relabel", "prepare_samples_like", "summarise"]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    group: str  # photos sharing a group always land in the same split
    split: str  # train | calib | val
    kind: str = ""
    source: str = ""
    description: str = ""  # catalogue text where the data has it: helps a person judge a doubted label


@dataclass(frozen=True)
class SplitReport:
    near_duplicate_pairs: int  # photo pairs found to be the same picture or object shot
    dropped_from_training: int  # training photos that near-duplicate a photo of the data's own val split

    def __str__(self) -> str:
        return (f"{self.near_duplicate_pairs} near-duplicate photo pairs kept on one side of the split; "
                f"{self.dropped_from_training} training photos dropped as near-duplicates of val photos")


def prepare_samples(
    data: Path,
    *,
    val_fraction: float,
    calib_fraction: float,
    near_duplicate_distance: int = DEFAULT_MAX_DISTANCE,
    relabel: Mapping[str, str] | None = None,
) -> tuple[list[Sample], SplitReport]:
    """Load a dataset and split it without leakage: by group, with near-duplicate photos joined into one group.

    `relabel` maps a `kind` to a label of its own (a new class carved out of existing photos). Train, evaluate and
    export all call this, so each rebuilds exactly the same split from the same data.
    """
    samples = [replace(s, label=relabel.get(s.kind, s.label)) if relabel else s for s in load_samples(data)]
    hashes, readable = hash_files([s.path for s in samples])
    pairs = near_duplicate_pairs(hashes, readable, max_distance=near_duplicate_distance)
    samples = assign_splits(_join_groups(samples, pairs), val_fraction=val_fraction, calib_fraction=calib_fraction)
    # Where the data fixes the split itself, a group can still straddle it: val stays intact, training gives way.
    val_groups = {s.group for s in samples if s.split == "val"}
    kept = [s for s in samples if s.split == "val" or s.group not in val_groups]
    return kept, SplitReport(len(pairs), len(samples) - len(kept))


def prepare_samples_like(data: Path, config: dict) -> tuple[list[Sample], SplitReport]:
    """The split a model was trained with, rebuilt from its recorded training config."""
    return prepare_samples(
        data, val_fraction=config.get("val_fraction", 0.15), calib_fraction=config.get("calib_fraction", 0.1),
        near_duplicate_distance=config.get("near_duplicate_distance", DEFAULT_MAX_DISTANCE),
        relabel=parse_relabel(config.get("relabel", [])),
    )


def parse_relabel(pairs: Iterable[str]) -> dict[str, str]:
    """`["kind=label", ...]` as a mapping; anything else is refused."""
    pairs = list(pairs)
    malformed = [pair for pair in pairs if pair.count("=") != 1 or pair.startswith("=") or pair.endswith("=")]
    if malformed:
        raise ValueError(f"relabel takes KIND=LABEL pairs, got {malformed}")
    return dict(pair.split("=") for pair in pairs)


def load_samples(data: Path) -> list[Sample]:
    """Read a dataset; samples whose split the data does not give get `split=""` (see `assign_splits`)."""
    data = Path(data)
    if data.is_file():
        return _from_csv(data)
    if (data / "manifest.csv").is_file():
        return _from_csv(data / "manifest.csv")
    if data.is_dir():
        return _from_folders(data)
    raise FileNotFoundError(f"no dataset at {data}: give a folder with one sub-folder per label, or a CSV")


def assign_splits(samples: Iterable[Sample], *, val_fraction: float, calib_fraction: float) -> list[Sample]:
    """Give every sample a split: keep `val` where the data says so, otherwise hash the group.

    A `calib` part is always carved out of training groups: temperature and thresholds are fitted there, so neither
    training nor calibration ever touches the photos that accuracy is reported on.
    """
    assigned = []
    for sample in samples:
        position = _group_position(sample.group)
        split = sample.split or ("val" if position < val_fraction else "train")
        if split == "train" and _group_position("calib:" + sample.group) < calib_fraction:
            split = "calib"
        assigned.append(replace(sample, split=split))
    return assigned


def manifest_hash(samples: Iterable[Sample]) -> str:
    """A fingerprint of exactly which photos, labels and splits a model was trained on.

    Paths count relative to the photos' common folder, so the same data gives the same fingerprint wherever it lies
    and however its path was spelled.
    """
    samples = list(samples)
    root = os.path.commonpath([os.path.abspath(s.path) for s in samples]) if samples else ""
    lines = sorted(f"{Path(os.path.relpath(os.path.abspath(s.path), root)).as_posix()}\t{s.label}\t{s.split}"
                   for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def summarise(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Photo counts per split and label, and per source, for the model card and metadata."""
    samples = list(samples)
    by_split: dict[str, dict[str, int]] = {}
    for (split, label), count in sorted(Counter((s.split, s.label) for s in samples).items()):
        by_split.setdefault(split, {})[label] = count
    return {"by_split": by_split, "by_source": dict(sorted(Counter(s.source or "unknown" for s in samples).items()))}


def _join_groups(samples: list[Sample], pairs: list[tuple[int, int]]) -> list[Sample]:
    """Union-find over groups: two photos in a near-duplicate pair end up in one group (named by its smallest member)."""
    parent = {s.group: s.group for s in samples}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for first, second in pairs:
        a, b = root(samples[first].group), root(samples[second].group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [replace(s, group=root(s.group)) for s in samples]


def _group_position(group: str) -> float:
    """A stable pseudo-random number in [0, 1) per group, independent of file order and Python's hash seed."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64


def _from_csv(csv_path: Path) -> list[Sample]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; needs at least 'path' and 'label'")
        samples = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise ValueError(f"{csv_path}:{line}: empty path or label")
            split = (row.get("split") or "").strip()
            if split not in ("", "train", "val"):
                raise ValueError(f"{csv_path}:{line}: split must be 'train', 'val' or empty, got {split!r}")
            path = Path(row["path"])
            samples.append(Sample(
                path=path if path.is_absolute() else root / path,
                label=row["label"].strip(),
                group=row.get("group") or row.get("source_id") or row["path"],
                split=split,
                kind=row.get("kind") or "",
                source=row.get("source") or "",
                description=(row.get("description") or "").strip(),
            ))
    return samples


def _from_folders(root: Path) -> list[Sample]:
    label_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [
        Sample(path=path, label=label_dir.name, group=path.relative_to(root).as_posix(), split="", kind=label_dir.name)
        for label_dir in label_dirs
        for path in sorted(label_dir.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if len({s.label for s in samples}) < 2:
        raise ValueError(f"{root}: found images for fewer than two labels; expected one sub-folder per label")
    return samples
