"""A run's split, written once by training and read by every later step: export, evaluation, int8 calibration.

Splitting hashes every photo perceptually to join near-duplicates, minutes on a large data set; so training writes
the result, `RUN/split.json` (each photo's path relative to its data source, label, group, split and SHA-256), and
later steps read it instead of splitting again. Reading checks the data on disk against the record and refuses, with
a message naming the photos, when any recorded photo has changed, gone or been relabelled: figures measured on a
different set of photos than the model held out would look honest and not be. Photos added to a source after
training are not part of the split and are not scored.

A model whose run folder holds no split file (trained before split files existed, or moved without its run folder)
gets its split rebuilt from its recorded config, said on stderr, and refused unless the rebuilt split has the
fingerprint the model recorded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from training.data import (
    DataSource, Sample, SplitReport, content_hash, file_digest, label_sources, manifest_hash, prepare_samples_like,
    sources_from_config,
)
from training.errors import DataError
from training.options import option

__all__ = ["SPLIT_FILE", "RecordedSplit", "load_split", "read_split", "recorded_data_option", "split_file_option",
           "write_split"]

SPLIT_FILE = "split.json"
_FORMAT = "wildvision-split/1"
_EXAMPLES = 3  # photos named in a refusal: enough to find the change, few enough for one line


@dataclass(frozen=True)
class RecordedSplit:
    """The photos of a run with the split training gave them, as recorded in its `split.json`."""

    samples: list[Sample]
    report: SplitReport
    manifest_sha256: str  # `manifest_hash` of the samples: which photos, labels and splits
    content_sha256: str  # `content_hash` of the samples: their bytes too

    def fingerprint(self) -> dict[str, str]:
        """As the checkpoint and model file record the data (`training.data`)."""
        return {"manifest_sha256": self.manifest_sha256, "content_sha256": self.content_sha256}


def write_split(
    folder: Path, samples: Sequence[Sample], report: SplitReport, sources: Sequence[DataSource], relabel: Mapping[str, str]
) -> RecordedSplit:
    """Record the split in `folder/split.json` (atomically) and return it with its fingerprints."""
    roots = {source.name: _root(source.path) for source in sources}
    digests = [file_digest(s.path) for s in samples]
    recorded = RecordedSplit(list(samples), report, manifest_hash(samples), content_hash(samples))
    document = {
        "format": _FORMAT,
        "sources": [source.to_config() for source in sources],
        "relabel": dict(relabel),
        "report": asdict(report),
        **recorded.fingerprint(),
        "samples": [{**asdict(s), "path": Path(os.path.relpath(s.path, roots[s.dataset])).as_posix(), "sha256": digest}
                    for s, digest in zip(samples, digests)],
    }
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (SPLIT_FILE + ".partial")
    partial.write_text(json.dumps(document), encoding="utf-8")
    partial.replace(folder / SPLIT_FILE)
    return recorded


def read_split(path: Path, data: Sequence[Path] = ()) -> RecordedSplit:
    """The split recorded at `path`, its sources moved to `data` where given (same order and count), checked against
    the photos on disk; `DataError` where any has changed."""
    return _checked_split(_read_document(path), path, data)


def recorded_data_option(whose: str = "model") -> tuple[Path, ...]:
    """`--data`, a config field (`training.options`) of commands that read a recorded split (`load_split`): where the
    `whose` training data lies now. Declared here once for evaluate, reference and export."""
    return option((), f"where the {whose}'s training data lies now (default: where its config recorded it); repeat "
                      "for each of its sources, in order", changes_weights=False, repeatable=True)


def split_file_option() -> Path | None:
    """`--split-file`, a config field: the split file of the model's training run."""
    return option(None, f"the {SPLIT_FILE} of the model's training run (default: the one in the run folder its config "
                        "records, else the split is rebuilt from the config)", changes_weights=False)


def load_split(
    training: Mapping[str, object], *, data: Sequence[Path] = (), split_file: Path | None = None,
    default: Path | None = None,
) -> list[Sample]:
    """The photos and split a model or checkpoint was trained with (`training` holds its `config` and `data`).

    `split_file` must exist and belong to the model. Otherwise the split file at `default` (else in the run folder
    the config records) is used where it belongs to the model, and the split is rebuilt from the config where not.
    """
    config, fingerprint = training["config"], training["data"]
    path = split_file or default or Path(str(config.get("out", ""))) / SPLIT_FILE
    if split_file is not None or path.is_file():
        document = _read_document(path)
        if document["manifest_sha256"] == fingerprint["manifest_sha256"]:
            return _checked_split(document, path, data).samples
        if split_file is not None:
            raise DataError(f"{path} records another run's split (fingerprint {document['manifest_sha256'][:12]}, "
                            f"the model's {fingerprint['manifest_sha256'][:12]}): give the split file of its run")
        print(f"note: {path} records another run's split", file=sys.stderr)
    print(f"note: no recorded split of this model at {path}: rebuilding it from the model's training config "
          "(hashes every photo, minutes on a large data set)", file=sys.stderr)
    samples, _ = prepare_samples_like(config, data)
    if manifest_hash(samples) != fingerprint["manifest_sha256"]:
        raise DataError(f"the data at {', '.join(str(s.path) for s in sources_from_config(config, data))} no longer "
                        "gives the split this model was trained on (its photos, labels or split differ from the "
                        "model's recorded fingerprint): restore that data, or measure a model trained on this data")
    return samples


def _read_document(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read the recorded split {path}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise DataError(f"{path} is not a wildvision split file ({_FORMAT})")
    return document


def _checked_split(document: dict, path: Path, data: Sequence[Path]) -> RecordedSplit:
    """The recorded samples at their (possibly moved) place, once the data on disk is found unchanged."""
    recorded_names = [DataSource.from_config(item).name for item in document["sources"]]
    sources = sources_from_config({"data": document["sources"]}, data)
    roots = {name: _root(source.path) for name, source in zip(recorded_names, sources)}
    entries = document["samples"]
    samples = [Sample(**{key: value for key, value in entry.items() if key != "sha256"}
                      | {"path": roots[entry["dataset"]] / entry["path"]}) for entry in entries]
    _check_unchanged(path, samples, [entry["sha256"] for entry in entries], label_sources(sources, document["relabel"]))
    return RecordedSplit(samples, SplitReport(**document["report"]), document["manifest_sha256"],
                         document["content_sha256"])


def _check_unchanged(path: Path, samples: list[Sample], digests: list[str], listed: list[Sample]) -> None:
    """Refuse where a recorded photo is gone from its source, has another label there, or other bytes."""
    labels = {_key(s.path): s.label for s in listed}
    problems: dict[str, list[str]] = {"gone or unreadable": [], "relabelled": [], "changed": []}
    for sample, digest in zip(samples, digests):
        problem = _problem(sample, digest, labels.get(_key(sample.path)))
        if problem:
            problems[problem].append(str(sample.path))
    found = {kind: paths for kind, paths in problems.items() if paths}
    if found:
        counts = ", ".join(f"{len(paths)} photo(s) {kind}" for kind, paths in found.items())
        examples = [p for paths in found.values() for p in paths][:_EXAMPLES]
        raise DataError(f"the data no longer matches the split recorded in {path} at training: {counts} "
                        f"(e.g. {', '.join(examples)}); restore the data the model was trained on, or retrain: "
                        "figures on other photos than the model held out would not be honest")


def _problem(sample: Sample, recorded_digest: str, listed_label: str | None) -> str | None:
    """How a recorded photo differs from the data on disk, or None."""
    if listed_label is None:
        return "gone or unreadable"
    if listed_label != sample.label:
        return "relabelled"
    digest = file_digest(sample.path)
    if digest == recorded_digest:
        return None
    return "gone or unreadable" if digest == "unreadable" else "changed"


def _root(source: Path) -> Path:
    """The folder a source's photo paths are recorded relative to: the source folder, or the CSV file's folder."""
    source = Path(source)
    return source.parent if source.is_file() else source


def _key(path: Path) -> str:
    """One spelling per photo, however its data wrote the path (`./a.jpg`, `sub/../a.jpg`)."""
    return os.path.normpath(os.path.abspath(path))
