"""What adapt reads: the platform's labelled photos (checked), and what the base model's data gives it.

The base's data comes as vectors in its reference file (`training.reference`, `NAME.reference.npz` beside the model)
or, with `--base-data`, as its photos embedded by the base's own graph: a sample is replayed beside the new photos,
held-out vectors judge forgetting (`training.adapt.judge`) and, with the reference, its calib vectors bound the
thresholds (the open world).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from training.adapt_config import AdaptConfig
from training.calibration import softmax
from training.data import DataSource, Sample, content_hash, label_sources, manifest_hash
from training.errors import DataError
from training.features import compute_features
from training.head import Head
from training.checks import similar_labels
from training.reference import ReferenceData
from wildvision.classifier import Classifier
from wildvision.model_info import ModelInfo, OperatingPoint

__all__ = ["MIN_NEW_LABEL_PHOTOS", "BaseCalibration", "BaseData", "BaseVectors", "OpenWorld", "base_data",
           "embedded", "fingerprint", "label_set", "read_data", "reference_vectors"]

MIN_NEW_LABEL_PHOTOS = 5  # a new label needs photos in most of the cross-validation folds to be fitted and calibrated


@dataclass(frozen=True)
class BaseVectors:
    """Photos of the base model's own data as embeddings: from the reference file, or --base-data photos embedded."""

    embeddings: np.ndarray
    labels: np.ndarray  # str, after --relabel
    sources: np.ndarray  # str
    groups: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self, labels: Sequence[str]) -> np.ndarray:
        return np.array([labels.index(label) for label in self.labels], dtype=np.int64)


@dataclass(frozen=True)
class OpenWorld:
    """Held-out vectors of the base's world that bound the thresholds: the reference's calib photos."""

    vectors: BaseVectors
    review_sources: frozenset[str]  # everyday sources: their harmless photos bound review (the base's choice)


@dataclass(frozen=True)
class BaseData:
    """What the base model's data gives adapt: replay, the judge's vectors and the held-out check, and the open world,
    each where available."""

    replay: BaseVectors | None
    judged: BaseVectors | None  # what the judge of forgetting sees: the reference's calib vectors, else base photos
    check: BaseVectors | None  # held out of every choice: the base's val vectors, reported
    open_world: OpenWorld | None
    replayed: dict[str, object] | None  # provenance of the replayed photos, for the model's metadata


@dataclass(frozen=True)
class BaseCalibration:
    """The base model's temperature, thresholds and label count: what thresholds matched to the base follow."""

    temperature: float
    operating_points: Mapping[str, OperatingPoint]
    labels: int  # the base's labels come first in the adapted model's

    def probabilities(self, start: Head, embeddings: np.ndarray) -> np.ndarray:
        """The base's calibrated scores in the adapted label order; a label the base lacks scores 0."""
        probabilities = softmax(start.logits(embeddings)[:, : self.labels], self.temperature)
        return np.pad(probabilities, ((0, 0), (0, len(start.bias) - self.labels)))


def read_data(
    data: Sequence[Path], base_data: Sequence[Path], relabel: dict[str, str]
) -> tuple[list[Sample], list[Sample]]:
    """The labelled photos and the base data's, read together so that a relabel rule may match either; refused where
    a listed photo is missing: a silently smaller set would shift the thresholds."""
    labelled_sources = [DataSource(Path(path)) for path in data]
    samples = label_sources(labelled_sources + [DataSource(Path(path)) for path in base_data], relabel)
    missing = [str(s.path) for s in samples if not s.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} photo(s) not found, e.g. {missing[:3]}; fix the paths in the CSV "
                        "(relative to the CSV's folder) or remove their rows")
    names = {source.name for source in labelled_sources}
    labelled = [s for s in samples if s.dataset in names]
    if not labelled:
        raise DataError(f"no labelled photos in {[str(path) for path in data]}")
    return labelled, [s for s in samples if s.dataset not in names]


def label_set(info: ModelInfo, samples: Sequence[Sample], new_labels: Sequence[str]) -> list[str]:
    """The base model's labels, then the declared new ones; any other label in the data is refused as a typo."""
    present = {s.label for s in samples}
    unknown = sorted(present - set(info.labels) - set(new_labels))
    if unknown:
        raise DataError(f"label(s) {unknown} in the data are not the model's {list(info.labels)}; fix them, or "
                        "declare a new label with --new-label LABEL")
    clashing = sorted(set(new_labels) & set(info.labels))
    if clashing:
        raise DataError(f"--new-label {clashing}: the base model already has these labels")
    labels = list(info.labels) + sorted(set(new_labels))
    for first, second in similar_labels(labels):
        raise DataError(f"labels {first!r} and {second!r} look like one label spelt two ways; rename the new label")
    short = [label for label in new_labels if sum(s.label == label for s in samples) < MIN_NEW_LABEL_PHOTOS]
    if short:
        raise DataError(f"new label(s) {short} need at least {MIN_NEW_LABEL_PHOTOS} labelled photos each")
    return labels


def base_data(
    base: Classifier, samples: list[Sample], reference: ReferenceData | None, labels: list[str],
    relabel: Mapping[str, str], args: AdaptConfig, cache: Path,
) -> BaseData:
    """Replay, judged vectors and val check from --base-data photos where given, else from the reference vectors; the
    open world from the reference's calib vectors."""
    open_world = calib = None
    if reference is not None:
        calib = reference_vectors(reference, "calib", labels, relabel, len(reference))
        open_world = OpenWorld(calib, frozenset(reference.open_world_sources))
    if samples:
        anchors = args.anchor_photos if reference is None else 0
        replay, judged, check = _base_photos(samples, labels, args.base_photos, anchors, args.check_photos)
        return BaseData(embedded(base, replay, cache), calib or embedded(base, judged, cache),
                        embedded(base, check, cache), open_world, fingerprint(replay) if replay else None)
    if reference is None:
        return BaseData(None, None, None, None, None)
    replay = reference_vectors(reference, "replay", labels, relabel, args.base_photos)
    return BaseData(replay, calib, reference_vectors(reference, "val", labels, relabel, args.check_photos), open_world,
                    {"reference": reference.model, "network": reference.network, "photos": len(replay),
                     "by_label": {str(label): int(count) for label, count in
                                  zip(*np.unique(replay.labels, return_counts=True))}})


def reference_vectors(
    reference: ReferenceData, role: str, labels: list[str], relabel: Mapping[str, str], count: int
) -> BaseVectors:
    """Up to `count` of the reference's vectors of one role, labelled as --relabel says (by their kind)."""
    rows = reference.role(role)
    names = np.array([relabel.get(kind, label) for kind, label in zip(rows.kinds, rows.labels)], dtype=str)
    unknown = sorted(set(names.tolist()) - set(labels))
    if unknown:
        raise DataError(f"the reference data has labels {unknown} that the adapted model would not have; relabel them")
    names = np.array([str(label) for label in names])
    return BaseVectors(rows.embeddings[:count], names[:count], rows.sources[:count], rows.groups[:count])


def embedded(base: Classifier, samples: list[Sample], cache: Path) -> BaseVectors:
    """Photos as the base model's embeddings (cached and resumable), with their labels, sources and groups."""
    features = compute_features(base, [s.path for s in samples], cache=cache / "features")
    kept = [samples[i] for i in features.kept]
    return BaseVectors(features.embeddings.reshape(len(kept), -1), np.array([s.label for s in kept], dtype=str),
                       np.array([s.source or s.dataset for s in kept], dtype=str),
                       np.array([s.group for s in kept], dtype=str))


def _base_photos(
    samples: list[Sample], labels: Sequence[str], replay_count: int, anchor_count: int, check_count: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """From the base data's non-val photos a replay sample and, apart from it, photos for the judge; and a sample of
    its val photos."""
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise DataError(f"--base-data has labels {unknown} that the adapted model would not have; relabel them")
    # Only the split the data states counts: a model trained on it held its `val` photos out, so they measure it.
    val = [s for s in samples if s.split == "val"]
    rest = [s for s in samples if s.split != "val"]
    ranked = _sample(rest, replay_count + anchor_count)
    return ranked[:replay_count], ranked[replay_count:], _sample(val, check_count)


def _sample(samples: list[Sample], count: int) -> list[Sample]:
    """A fixed pseudo-random subset: the same photos on every rerun, so the feature cache is reused."""
    ranked = sorted(samples, key=lambda s: hashlib.sha256(str(s.path).encode()).hexdigest())
    return ranked[:count]


def fingerprint(samples: list[Sample]) -> dict[str, object]:
    """Counts per label and the manifest and content SHA-256 of a set of photos, for the model's metadata."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.label] = counts.get(sample.label, 0) + 1
    return {"photos": len(samples), "by_label": dict(sorted(counts.items())),
            "manifest_sha256": manifest_hash(samples), "content_sha256": content_hash(samples)}
