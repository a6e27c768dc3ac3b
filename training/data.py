"""Labelled photos from one or several data sources, split without leakage between groups.

A source is a folder-per-label tree or a CSV. A CSV needs `path` and `label` columns; optional columns are `group` (or
`source_id`: one object, seller or listing, never split across train and val), `split` (train/val), `kind` and
`source` (used to break metrics down). A folder with a `manifest.csv` is read as that CSV; any other folder is read as
one sub-folder per label. Each source keeps its own relabelling and calib share (`DataSource`); near-duplicates are
found across all of them, so one photo posted in two sources never straddles the split.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from training.dedupe import DEFAULT_MAX_DISTANCE, hash_files, near_duplicate_pairs
from training.errors import DataError
from wildvision.hashing import file_sha256
from wildvision.images import IMAGE_SUFFIXES

__all__ = ["DEFAULT_CALIB_FRACTION", "DEFAULT_VAL_FRACTION", "MIN_CALIB_PHOTOS", "DataSource", "Sample", "SplitReport",
           "assign_splits", "content_hash", "file_digest", "label_sources", "list_samples_like", "load_samples",
           "manifest_hash", "parse_relabel", "prepare_samples", "prepare_samples_like", "sources_from_config", "spread",
           "summarise"]


MIN_CALIB_PHOTOS = 2  # per label: temperature and thresholds need a label's photos among the held-out ones
# The split's defaults, here only: training's options and a recorded config without them both take these.
DEFAULT_VAL_FRACTION = 0.15  # share of groups held out for val, where the data gives no split of its own
DEFAULT_CALIB_FRACTION = 0.1  # share of training groups held out for temperature and thresholds


@dataclass(frozen=True)
class DataSource:
    """One labelled dataset and how a run reads it; unset options fall back to the run's own."""

    path: Path
    relabel: Mapping[str, str] = field(default_factory=dict)  # kind -> label, on top of the run's --relabel
    label: str | None = None  # every photo gets this label: a harmless source reused under any label set
    calib_fraction: float | None = None  # share of training groups held out for temperature and thresholds
    views: int | None = None  # augmented views cached per training photo

    @property
    def name(self) -> str:
        """How reports and provenance name the source: its folder (or CSV file) name."""
        path = Path(self.path).resolve()  # `.` or `data/` name the folder they point at
        return path.parent.name if path.name == "manifest.csv" else path.stem if path.is_file() else path.name

    @classmethod
    def from_config(cls, value: str | Path | Mapping[str, object]) -> DataSource:
        """A path, or a table of `path` plus options (TOML `[[data]]`, or a recorded run's config)."""
        if isinstance(value, (str, Path)):
            return cls(Path(value))
        options = {key.replace("-", "_"): item for key, item in value.items()}
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown or "path" not in options:
            raise DataError(f"a data source takes 'path' and optionally {[f.name for f in fields(cls)][1:]}; "
                             f"got {sorted(value)}")
        relabel = options.get("relabel") or {}
        return cls(**{**options, "path": Path(options["path"]),
                      "relabel": parse_relabel(relabel) if isinstance(relabel, list) else dict(relabel)})

    def to_config(self) -> dict[str, object]:
        """JSON-ready, as recorded in checkpoints and model files; `from_config` reads it back."""
        return {key: value for key, value in
                [("path", str(self.path)), ("relabel", dict(self.relabel)), ("label", self.label),
                 ("calib_fraction", self.calib_fraction), ("views", self.views)] if value not in (None, {})}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    group: str  # photos sharing a group always land in the same split
    split: str  # train | calib | val
    kind: str = ""
    source: str = ""  # the photo's origin as its data names it (e.g. met, caltech101), else its data source's name
    dataset: str = ""  # the DataSource it came from
    description: str = ""  # catalogue text where the data has it: helps a person judge a doubted label


@dataclass(frozen=True)
class SplitReport:
    near_duplicate_pairs: int  # photo pairs found to be the same picture or object shot
    dropped_from_training: int  # training photos that near-duplicate a photo of the data's own val split

    def __str__(self) -> str:
        return (f"{self.near_duplicate_pairs} near-duplicate photo pairs kept on one side of the split; "
                f"{self.dropped_from_training} training photos dropped as near-duplicates of val photos")


def prepare_samples(
    data: Path | DataSource | Sequence[DataSource],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
    near_duplicate_distance: int = DEFAULT_MAX_DISTANCE,
    relabel: Mapping[str, str] | None = None,
) -> tuple[list[Sample], SplitReport]:
    """Load one or several data sources and split them without leakage: by group, near-duplicates joined into one.

    `relabel` maps a `kind` to a label of its own (a new class carved out of existing photos) in every source.
    Training calls this once and records the result (`training.split`); later steps read that record.
    """
    sources = _as_sources(data)
    samples = label_sources(sources, relabel or {})
    calib_fractions = {source.name: calib_fraction if source.calib_fraction is None else source.calib_fraction
                       for source in sources}
    hashes, readable = hash_files([s.path for s in samples])
    pairs = near_duplicate_pairs(hashes, readable, max_distance=near_duplicate_distance)
    samples = assign_splits(_join_groups(samples, pairs), val_fraction=val_fraction, calib_fraction=calib_fractions)
    samples = _calib_for_every_label(samples)
    # Where the data fixes the split itself, a group can still straddle it: val stays intact, training gives way.
    val_groups = {s.group for s in samples if s.split == "val"}
    kept = [s for s in samples if s.split == "val" or s.group not in val_groups]
    return kept, SplitReport(len(pairs), len(samples) - len(kept))


def prepare_samples_like(
    config: Mapping[str, object], data: Path | Sequence[Path] = ()
) -> tuple[list[Sample], SplitReport]:
    """The split a model was trained with, rebuilt from its recorded training config: for a model whose run recorded
    no split file (see `training.split.load_split`), at the cost of perceptually hashing every photo again.

    `data` relocates the recorded sources (same order and count), keeping each source's recorded options.
    """
    return prepare_samples(
        sources_from_config(config, data), val_fraction=config.get("val_fraction", DEFAULT_VAL_FRACTION),
        calib_fraction=config.get("calib_fraction", DEFAULT_CALIB_FRACTION),
        near_duplicate_distance=config.get("near_duplicate_distance", DEFAULT_MAX_DISTANCE),
        relabel=parse_relabel(config.get("relabel", [])),
    )


def list_samples_like(config: Mapping[str, object], data: Path | Sequence[Path] = ()) -> list[Sample]:
    """Every photo of a model's recorded sources (or of `data` in their place), labelled as its training labelled
    them, with no split: the photos `--split all` scores, which may be new photos the model never saw."""
    return label_sources(sources_from_config(config, data), parse_relabel(config.get("relabel", [])))


def label_sources(sources: Sequence[DataSource], relabel: Mapping[str, str]) -> list[Sample]:
    """Every photo of the sources, labelled and grouped as training sees them, before any split is given."""
    names = [source.name for source in sources]
    if len(set(names)) < len(names):
        raise DataError(f"data sources need distinct folder or file names, got {names}")
    samples = []
    for source in sources:
        samples += _source_samples(source, {**relabel, **source.relabel}, namespaced=len(sources) > 1)
    _check_relabel_rules(sources, relabel, samples)
    return samples


def sources_from_config(config: Mapping[str, object], data: Path | Sequence[Path] = ()) -> list[DataSource]:
    """A run's data sources as its config records them (a path or a list of sources), optionally moved to `data`."""
    data = [data] if isinstance(data, (str, Path)) else list(data)
    recorded = config.get("data") or []
    sources = [DataSource.from_config(item) for item in (recorded if isinstance(recorded, list) else [recorded])]
    if not data:
        if not sources:
            raise DataError("the model records no training data: name it with --data")
        return sources
    if sources and len(data) != len(sources):
        raise DataError(f"the model was trained on {len(sources)} data source(s) "
                         f"({', '.join(str(s.path) for s in sources)}); give as many --data, in that order")
    if not sources:
        return [DataSource(Path(path)) for path in data]
    return [replace(source, path=Path(path)) for source, path in zip(sources, data)]


def parse_relabel(pairs: Iterable[str]) -> dict[str, str]:
    """`["kind=label", ...]` as a mapping; anything else is refused."""
    pairs = list(pairs)
    malformed = [pair for pair in pairs if pair.count("=") != 1 or pair.startswith("=") or pair.endswith("=")]
    if malformed:
        raise DataError(f"relabel takes KIND=LABEL pairs, got {malformed}")
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
    raise DataError(f"no dataset at {data}: give a folder with one sub-folder per label, or a CSV")


def assign_splits(
    samples: Iterable[Sample], *, val_fraction: float, calib_fraction: float | Mapping[str, float]
) -> list[Sample]:
    """Give every sample a split: keep `val` where the data says so, otherwise hash the group.

    A `calib` part is always carved out of training groups: temperature and thresholds are fitted there, so neither
    training nor calibration ever touches the photos that accuracy is reported on. `calib_fraction` may differ per
    dataset (a mapping from `Sample.dataset`).
    """
    assigned = []
    for sample in samples:
        position = _group_position(sample.group)
        split = sample.split or ("val" if position < val_fraction else "train")
        share = calib_fraction if isinstance(calib_fraction, float | int) else calib_fraction[sample.dataset]
        if split == "train" and _group_position("calib:" + sample.group) < share:
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


def content_hash(samples: Iterable[Sample]) -> str:
    """A fingerprint of the photos' bytes, labels and splits: changes when any photo is edited or replaced, which
    `manifest_hash` (paths only) cannot see."""
    samples = sorted(samples, key=lambda s: str(s.path))
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{file_digest(sample.path)}\t{sample.label}\t{sample.split}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a photo's bytes, or `unreadable`: an unreadable photo was left out of training, and its absence is
    part of the fingerprint."""
    try:
        return file_sha256(path)
    except OSError:
        return "unreadable"


def spread(samples: Sequence[Sample], count: int) -> list[Sample]:
    """Every n-th sample, up to `count`: samples come grouped by label, so the choice spreads over the labels (the
    photos export and adapt check parity and calibrate int8 on)."""
    step = max(1, len(samples) // max(count, 1))
    return list(samples[::step][:count])


def summarise(samples: Iterable[Sample]) -> dict[str, object]:
    """Photo counts per split and label, per source, and each data source's own fingerprint, for the metadata."""
    samples = list(samples)
    by_dataset: dict[str, list[Sample]] = {}
    for sample in samples:
        by_dataset.setdefault(sample.dataset, []).append(sample)
    return {
        "by_split": _counts_by_split(samples),
        "by_source": dict(sorted(Counter(s.source or "unknown" for s in samples).items())),
        "datasets": {name: {"manifest_sha256": manifest_hash(part), "photos": len(part), "by_split": _counts_by_split(part)}
                     for name, part in sorted(by_dataset.items())},
    }


def _counts_by_split(samples: list[Sample]) -> dict[str, dict[str, int]]:
    by_split: dict[str, dict[str, int]] = {}
    for (split, label), count in sorted(Counter((s.split, s.label) for s in samples).items()):
        by_split.setdefault(split, {})[label] = count
    return by_split


def _check_relabel_rules(sources: Sequence[DataSource], relabel: Mapping[str, str], samples: list[Sample]) -> None:
    """A rule whose kind matches no photo is a typo that would silently train the model the rules meant to change."""
    kinds = {(s.dataset, s.kind) for s in samples}
    any_kind = {kind for _, kind in kinds}
    unmatched = [f"{kind}={label}" for kind, label in relabel.items() if kind not in any_kind]
    unmatched += [f"{kind}={label} (in {source.name})" for source in sources for kind, label in source.relabel.items()
                  if (source.name, kind) not in kinds]
    if unmatched:
        known = sorted(kind for kind in any_kind if kind)
        raise DataError(f"relabel rule(s) {unmatched} match no photo's kind; kinds in the data: {known[:40]}")


def _calib_for_every_label(samples: list[Sample]) -> list[Sample]:
    """Move training groups into `calib` until every label has `MIN_CALIB_PHOTOS` there: thresholds need them all.

    A rare label's few groups can all hash outside the calib share; the groups moved are those that hash closest to
    it, so the choice is as stable as the rest of the split. A label's last training group is never taken.
    """
    moved: set[str] = set()
    for label in sorted({s.label for s in samples}):
        in_calib = sum(s.label == label and s.split == "calib" for s in samples)
        groups = sorted({s.group for s in samples if s.label == label and s.split == "train"},
                        key=lambda group: _group_position("calib:" + group))
        sizes = Counter(s.group for s in samples if s.label == label and s.split == "train")
        for group in groups[:-1]:
            if in_calib >= MIN_CALIB_PHOTOS:
                break
            moved.add(group)
            in_calib += sizes[group]
    return [replace(s, split="calib") if s.group in moved and s.split == "train" else s for s in samples]


def _as_sources(data: Path | str | DataSource | Sequence[DataSource]) -> list[DataSource]:
    if isinstance(data, DataSource):
        return [data]
    if isinstance(data, (str, Path)):
        return [DataSource(Path(data))]
    return list(data)


def _source_samples(source: DataSource, relabel: Mapping[str, str], *, namespaced: bool) -> list[Sample]:
    """A source's photos, labelled as the source says; groups are prefixed by the source where several are mixed,
    so two sources' object ids never merge (a single source keeps its groups, and so the splits it always had)."""
    name = source.name  # resolved once, not per photo
    samples = []
    for sample in load_samples(source.path):
        label = relabel.get(sample.kind, source.label or sample.label)
        group = f"{name}/{sample.group}" if namespaced else sample.group
        samples.append(replace(sample, label=label, group=group, dataset=name, source=sample.source or name))
    return samples


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
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; needs at least 'path' and 'label'")
        samples = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise DataError(f"{csv_path}:{line}: empty path or label")
            split = (row.get("split") or "").strip()
            if split not in ("", "train", "val"):
                raise DataError(f"{csv_path}:{line}: split must be 'train', 'val' or empty, got {split!r}")
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
        raise DataError(f"{root}: found images for fewer than two labels; expected one sub-folder per label")
    return samples
