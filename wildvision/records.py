"""Scan records on disk: JSON Lines (nested scores), CSV and Parquet (one `score_<label>` column per label).

Records of a scan against a known-item index also carry `match`: nested in JSON Lines, `match_<field>` columns in
CSV and Parquet (present only in such files, so files of plain scans keep their columns).

`ScanRecord` is the one definition of a record; `flat_columns` and `flatten` derive the flat layout from it, and
`wildvision.spark` writes the same columns.

Writing is atomic (a temporary file renamed into place) and streams record by record, so converting a journal of
millions of records needs no more memory than one Parquet row group. Parquet needs `pip install wildvision[parquet]`.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, Sequence, get_type_hints

from wildvision.classifier import Decision, ModelIdentity, Prediction
from wildvision.errors import WildvisionError
from wildvision.images import ErrorCategory, ImageLoadError
from wildvision.known_items import Match

__all__ = [
    "FORMATS", "RecordFormatError", "ScanRecord", "ScanRecordWithMatch", "columns_of", "flat_columns", "flatten", "format_of", "read_records",
    "write_records",
]

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_ROW_GROUP = 10_000  # Parquet rows buffered before each write


@dataclass(frozen=True)
class ScanRecord:
    """One input file's outcome: scores and a decision, or an error saying why it could not be scored; always the
    model file that scored it (`Prediction`'s fields) and, when scored, the thresholds that decided.

    The one definition of a record: JSON Lines writes it as is; CSV, Parquet and Spark flatten it (`flat_columns`)."""

    path: str
    label: str | None
    decision: Decision | None
    scores: dict[str, float] | None  # flattened to one `score_<label>` column per label
    model_name: str
    model_version: str
    model_precision: str
    model_digest: str
    thresholds: str | None
    error: str | None = None
    error_category: ErrorCategory | None = None

    @classmethod
    def scored(cls, path: str, prediction: Prediction) -> ScanRecord:
        values = {name: value for name, value in prediction.to_dict().items() if name in _FIELD_NAMES}
        return cls(path=path, **values)

    @classmethod
    def failed(cls, path: str, error: ImageLoadError, identity: ModelIdentity) -> ScanRecord:
        return cls(path, None, None, None, identity.name, identity.version, identity.precision, identity.digest, None,
                   error.reason, error.category)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ScanRecordWithMatch(ScanRecord):
    """A record of a scan against a known-item index: `match` is `Match.to_dict()` of the re-posted item, or null;
    flattened to one `match_<field>` column per `Match` field."""

    match: dict[str, object] | None = None


_FIELD_NAMES = frozenset(field.name for field in fields(ScanRecord))
# Flat column types: every plain field is text, scores are floats, and a match's fields keep Match's own types.
_MATCH_TYPES: dict[str, type] = get_type_hints(Match)


class RecordFormatError(WildvisionError, ValueError):
    """An output file whose format or columns wildvision cannot write or continue."""


def format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise RecordFormatError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}") from None


def write_records(records: Iterable[dict], path: Path, labels: Sequence[str], *, with_match: bool = False) -> None:
    """Write `records` to `path` in the format its suffix names, replacing it atomically.

    `with_match`: the records carry `match` (a scan against a known-item index), written as `match_<field>` columns.
    """
    kind = format_of(path)
    partial = path.with_name(path.name + ".tmp")
    if kind == "jsonl":
        with partial.open("w", encoding="utf-8") as sink:
            sink.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    elif kind == "csv":
        with partial.open("w", encoding="utf-8", newline="") as sink:
            writer = csv.DictWriter(sink, fieldnames=[name for name, _ in flat_columns(labels, with_match=with_match)])
            writer.writeheader()
            writer.writerows(flatten(record, labels, with_match=with_match) for record in records)
    else:
        _write_parquet(records, partial, labels, with_match)
    os.replace(partial, path)


def read_records(path: Path, labels: Sequence[str]) -> Iterator[dict]:
    """Records as `ScanRecord.to_dict()` gives them, whatever the file's format."""
    kind = format_of(path)
    if kind == "jsonl":
        with path.open(encoding="utf-8") as source:
            yield from (json.loads(line) for line in source if line.strip())
    elif kind == "csv":
        with path.open(encoding="utf-8", newline="") as source:
            yield from (_nested(row, labels) for row in csv.DictReader(source))
    else:
        parquet = _pyarrow_parquet()
        for batch in parquet.ParquetFile(path).iter_batches():
            yield from (_nested(row, labels) for row in batch.to_pylist())


def flat_columns(labels: Sequence[str], *, with_match: bool = False) -> list[tuple[str, type]]:
    """The columns of CSV and Parquet records in `ScanRecord`'s field order, `scores` and `match` expanded, each with
    its Python type (`str`, `float` or `int`)."""
    return list(_flat_columns(tuple(labels), with_match))


@functools.cache
def _flat_columns(labels: tuple[str, ...], with_match: bool) -> tuple[tuple[str, type], ...]:
    """Derived once per label set: `flatten` asks for every row it writes."""
    columns: list[tuple[str, type]] = []
    for field in fields(ScanRecordWithMatch if with_match else ScanRecord):
        if field.name == "scores":
            columns += [(f"score_{label}", float) for label in labels]
        elif field.name == "match":
            columns += [(f"match_{name}", kind) for name, kind in _MATCH_TYPES.items()]
        else:
            columns.append((field.name, str))
    return tuple(columns)


def flatten(record: dict, labels: Sequence[str], *, with_match: bool = False) -> dict:
    """A record (`ScanRecord.to_dict()`) as one flat row, keys in `flat_columns` order."""
    scores, match = record["scores"] or {}, record.get("match") or {}
    values = {**record, **{f"score_{label}": scores.get(label) for label in labels},
              **{f"match_{name}": match.get(name) for name in _MATCH_TYPES}}
    return {name: values.get(name) for name, _ in _flat_columns(tuple(labels), with_match)}


def columns_of(path: Path) -> list[str] | None:
    """The flat columns of an existing CSV or Parquet records file (None for JSON Lines, which has no header)."""
    kind = format_of(path)
    if kind == "csv":
        with path.open(encoding="utf-8", newline="") as source:
            return next(csv.reader(source), [])
    if kind == "parquet":
        return _pyarrow_parquet().read_schema(path).names
    return None


def _nested(row: dict, labels: Sequence[str]) -> dict:
    """A flat row back to a record; CSV's empty strings mean null, and its numbers come back typed."""
    value = {name: (row[name] if row[name] != "" else None) for name in row}
    scored = value["error"] is None
    record = {}
    for field in fields(ScanRecordWithMatch if "match_id" in value else ScanRecord):
        if field.name == "scores":
            record["scores"] = {label: float(value[f"score_{label}"]) for label in labels} if scored else None
        elif field.name == "match":
            matched = value["match_id"] is not None
            record["match"] = ({name: kind(value[f"match_{name}"]) for name, kind in _MATCH_TYPES.items()}
                               if matched else None)
        else:
            record[field.name] = value.get(field.name)
    return record


def _write_parquet(records: Iterable[dict], path: Path, labels: Sequence[str], with_match: bool) -> None:
    parquet = _pyarrow_parquet()
    import pyarrow

    types = {int: pyarrow.int64(), str: pyarrow.string(), float: pyarrow.float64()}
    schema = pyarrow.schema([(name, types[kind]) for name, kind in flat_columns(labels, with_match=with_match)])
    with parquet.ParquetWriter(path, schema) as writer:
        rows: list[dict] = []
        for record in records:
            rows.append(flatten(record, labels, with_match=with_match))
            if len(rows) == _ROW_GROUP:
                writer.write_table(pyarrow.Table.from_pylist(rows, schema=schema))
                rows = []
        writer.write_table(pyarrow.Table.from_pylist(rows, schema=schema))


def _pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError:
        raise ImportError("Parquet output needs pyarrow: pip install 'wildvision[parquet]'") from None
    return pyarrow.parquet
