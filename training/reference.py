"""The base model's own data as embedding vectors, shipped beside the model file, so that a platform can adapt it
with nothing but its own labels.

`python -m training.reference --model models/NAME.onnx [--data SOURCE ...] [--out NAME.reference.npz]`

`training.adapt` fits a new head on the base network's `embedding` output, so vectors are all it needs of the base
model's data, and without the photos they cannot be recomputed. A reference file holds, for a sample of the photos
the model was trained with, their embeddings (float16) with label, kind, source, group and role:

- `replay`: `train` photos replayed beside the platform's photos, so the head keeps what the base learnt;
- `calib`: every photo of the split the base's own temperature and thresholds were fitted on (held out of training):
  the anchor on which the pull towards the base head is chosen (held out, so their accuracy measures what the base
  generalises, not what it memorised), and, its harmless photos with the everyday ones included, what adapted
  thresholds are bounded by (the open world);
- `val`: a sample of the held-out `val` photos, on which forgetting is measured; nothing is fitted on them.

The file is tied to the network, not to the file: `network_digest` (see `training.onnx_head`) covers preprocessing
and every weight but the classifier's, so it stays valid for an adapted model of the same network and is refused for
any other. `training.export` writes one beside every model it exports; this command writes one for a model exported
before reference files existed, from its recorded split (rebuilt and checked against the model's fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from training.data import Sample
from training.errors import ConfigError, DataError, run_command
from training.features import compute_features
from training.onnx_head import network_digest
from training.options import check_ranges, option, parse
from training.split import load_split, recorded_data_option, split_file_option
from wildvision.classifier import Classifier
from wildvision.model_info import ModelInfo

__all__ = ["FORMAT", "ROLES", "ReferenceCounts", "ReferenceData", "ReferenceMismatch", "build_reference",
           "choose_reference", "find_reference", "main", "read_reference", "reference_path", "write_reference"]

FORMAT = "wildvision-reference/1"
ROLES = ("replay", "calib", "val")
SUFFIX = ".reference.npz"
_COLUMNS = ("labels", "kinds", "sources", "groups", "roles")


class ReferenceMismatch(DataError):
    """Reference vectors computed by another network than the model's: replaying them would teach the head noise."""


@dataclass(frozen=True)
class ReferenceCounts:
    """Photos per role. The file costs about 1.7 kB per photo (float16, compressed): the defaults make ~5 MB.

    calib is taken whole where it is no larger than `calib`: the base's thresholds were fitted on all of it, so the
    adapted ones are bounded on the same photos.
    """

    replay: int = 1000  # as many as `adapt` replays by default (--base-photos)
    calib: int = 1500
    val: int = 700  # enough for the largest sources (Met: 202 in 1.1.0's) to be bounded on their own


@dataclass(frozen=True)
class ReferenceData:
    """One row per photo; `embeddings` are float32 in memory (float16 on disk)."""

    embeddings: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) str
    kinds: np.ndarray
    sources: np.ndarray
    groups: np.ndarray  # a hash of the photo's group: folds of a cross-fit never split one object
    roles: np.ndarray  # one of ROLES
    network: str  # `network_digest` of the model the vectors were computed with
    model: str  # name@version of that model, for messages
    open_world_sources: tuple[str, ...]  # harmless sources that bound `review` (the base's own choice)

    def role(self, role: str) -> ReferenceData:
        return self._rows(self.roles == role)

    def without_sources(self, sources: Sequence[str]) -> ReferenceData:
        """The rows of every other source (a simulation hides its stand-in platform from the reference this way)."""
        return self._rows(~np.isin(self.sources, list(sources)))

    def without_labels(self, labels: Sequence[str]) -> ReferenceData:
        return self._rows(~np.isin(self.labels, list(labels)))

    def _rows(self, keep: np.ndarray) -> ReferenceData:
        columns = {name: getattr(self, name)[keep] for name in ("embeddings",) + _COLUMNS}
        return ReferenceData(**columns, network=self.network, model=self.model,
                             open_world_sources=self.open_world_sources)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {role: int((self.roles == role).sum()) for role in ROLES}


def reference_path(model: Path) -> Path:
    """Where a model's reference file lives: `NAME.onnx` -> `NAME.reference.npz`, beside it (also in the wheel)."""
    return model.with_name(model.stem + SUFFIX)


def find_reference(model: Path, explicit: Path | None = None) -> ReferenceData | None:
    """The model's reference data (`explicit`, else the file beside it), or None where it has none; refused where it
    belongs to another network."""
    path = explicit or reference_path(model)
    if explicit is None and not path.is_file():
        return None
    return read_reference(path, network_digest(model))


def read_reference(path: Path, network: str) -> ReferenceData:
    """Read a reference file (no pickles: strings are stored as unicode arrays) and check it belongs to `network`."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            columns = {name: stored[name] for name in _COLUMNS}
            embeddings = stored["embeddings"].astype(np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: not a readable wildvision reference file ({error})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: unsupported reference format {meta.get('format')!r} (this version reads {FORMAT})")
    if meta["network"] != network:
        raise ReferenceMismatch(f"{path} holds vectors of {meta['model']} (network {meta['network']}), not of this "
                                f"model's network ({network}): give the model's own reference file with --reference")
    return ReferenceData(embeddings, **columns, network=meta["network"], model=meta["model"],
                         open_world_sources=tuple(meta["open_world_sources"]))


def write_reference(reference: ReferenceData, path: Path) -> int:
    """Write `reference` atomically (float16, compressed); returns the file's size in bytes."""
    meta = {"format": FORMAT, "network": reference.network, "model": reference.model,
            "open_world_sources": list(reference.open_world_sources), "counts": reference.counts()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as file:  # an ordinary file's permissions: it ships beside the model
        np.savez_compressed(file, meta=np.array(json.dumps(meta, sort_keys=True)),
                            embeddings=reference.embeddings.astype(np.float16),
                            **{name: getattr(reference, name).astype(str) for name in _COLUMNS})
    partial.replace(path)  # a killed write never leaves half a reference where adapt would read it
    return path.stat().st_size


def choose_reference(
    samples: Sequence[Sample], counts: ReferenceCounts = ReferenceCounts()
) -> list[tuple[Sample, str]]:
    """Each chosen photo with its role: a fixed pseudo-random sample per split (the same on every run)."""
    by_split = {split: _ranked([s for s in samples if s.split == split]) for split in ("train", "calib", "val")}
    chosen = [(s, "replay") for s in by_split["train"][: counts.replay]]
    chosen += [(s, "calib") for s in by_split["calib"][: counts.calib]]
    chosen += [(s, "val") for s in by_split["val"][: counts.val]]
    return chosen


def build_reference(
    classifier: Classifier, chosen: Sequence[tuple[Sample, str]], *, cache: Path | None = None
) -> ReferenceData:
    """The chosen photos' embeddings under `classifier`, with their labels, kinds, sources, groups and roles."""
    features = compute_features(classifier, [sample.path for sample, _ in chosen], cache=cache)
    kept = [chosen[i] for i in features.kept]
    column = {
        "labels": [s.label for s, _ in kept], "kinds": [s.kind for s, _ in kept],
        "sources": [s.source or s.dataset for s, _ in kept], "roles": [role for _, role in kept],
        "groups": [hashlib.sha256(s.group.encode()).hexdigest()[:12] for s, _ in kept],
    }
    return ReferenceData(features.embeddings, **{name: np.array(values, dtype=str) for name, values in column.items()},
                         network=network_digest(classifier.model_path), model=classifier.info.full_name,
                         open_world_sources=open_world_sources(classifier.info, [s for s, _ in kept]))


def open_world_sources(info: ModelInfo, samples: Sequence[Sample]) -> tuple[str, ...]:
    """The harmless sources that bounded the base's `review` (its `--review-sources`), else every harmless source."""
    recorded = (info.training.get("config") or {}).get("review_sources") or []
    harmless = sorted({s.source or s.dataset for s in samples if s.label not in info.operating_points})
    return tuple(source for source in harmless if not recorded or source in recorded)


def write_model_reference(
    model: Path, samples: Sequence[Sample], *, out: Path | None = None, counts: ReferenceCounts = ReferenceCounts(),
    cache: Path | None = None,
) -> Path:
    """Write the reference file of `model` from the photos of its split; returns its path."""
    path = out or reference_path(model)
    reference = build_reference(Classifier(model), choose_reference(samples, counts), cache=cache)
    size = write_reference(reference, path)
    roles = ", ".join(f"{role} {count}" for role, count in reference.counts().items())
    print(f"wrote {path}: {len(reference)} vectors ({roles}), {size / 1e6:.1f} MB")
    return path


def _ranked(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: hashlib.sha256(f"reference:{_relative(s)}".encode()).hexdigest())


def _relative(sample: Sample) -> str:
    """The photo's path within its data source's folder: the same choice wherever the data lies."""
    return "/".join(Path(os.path.abspath(sample.path)).parts[-3:])


@dataclass(frozen=True)
class ReferenceConfig:
    """Which model's reference to write, from which photos, and where."""

    model: Path | None = option(None, "the exported model (.onnx); required", changes_weights=False)
    data: tuple[Path, ...] = recorded_data_option()
    split_file: Path | None = split_file_option()
    out: Path | None = option(None, "default: NAME.reference.npz beside the model", changes_weights=False)
    work: Path | None = option(None, "feature cache (default: none)", changes_weights=False)

    def __post_init__(self) -> None:
        if self.model is None:
            raise ConfigError("--model: required")
        check_ranges(self)


def parse_args(argv: Sequence[str] | None) -> ReferenceConfig:
    return parse(ReferenceConfig, argv, prog="python -m training.reference", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: _write(parse_args(argv)))


def _write(args: ReferenceConfig) -> int:
    training: Mapping[str, object] = Classifier(args.model).info.training
    samples = load_split(training, data=args.data, split_file=args.split_file)
    write_model_reference(args.model, samples, out=args.out, cache=args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
