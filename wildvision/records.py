"""Scan records on disk: JSON Lines (nested scores), CSV and Parquet (one `score_<label>` column per label).

Writing is atomic (a temporary file renamed into place) and streams record by record, so converting a journal of
millions of records needs no more memory than one Parquet row group. Parquet needs `pip install wildvision[parquet]`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = ["FORMATS", "format_of", "read_records", "write_records"]

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_FIELDS = ("path", "label", "decision", "model_name", "model_version", "error", "error_category")
_ROW_GROUP = 10_000  # Parquet rows buffered before each write


def format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}") from None


def write_records(records: Iterable[dict], path: Path, labels: Sequence[str]) -> None:
    """Write `records` to `path` in the format its suffix names, replacing it atomically."""
    kind = format_of(path)
    partial = path.with_name(path.name + ".tmp")
    if kind == "jsonl":
        with partial.open("w", encoding="utf-8") as sink:
            sink.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    elif kind == "csv":
        with partial.open("w", encoding="utf-8", newline="") as sink:
            writer = csv.DictWriter(sink, fieldnames=_columns(labels))
            writer.writeheader()
            writer.writerows(_flat(record, labels) for record in records)
    else:
        _write_parquet(records, partial, labels)
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


def _columns(labels: Sequence[str]) -> list[str]:
    return [*_FIELDS[:3], *(f"score_{label}" for label in labels), *_FIELDS[3:]]


def _flat(record: dict, labels: Sequence[str]) -> dict:
    scores = record["scores"] or {}
    return {**{name: record[name] for name in _FIELDS}, **{f"score_{label}": scores.get(label) for label in labels}}


def _nested(row: dict, labels: Sequence[str]) -> dict:
    """A flat row back to a record; CSV's empty strings mean null."""
    value = {name: (row[name] if row[name] != "" else None) for name in row}
    scored = value["error"] is None
    scores = {label: float(value[f"score_{label}"]) for label in labels} if scored else None
    return {"path": value["path"], "scores": scores, **{name: value[name] for name in _FIELDS[1:]}}


def _write_parquet(records: Iterable[dict], path: Path, labels: Sequence[str]) -> None:
    parquet = _pyarrow_parquet()
    import pyarrow

    schema = pyarrow.schema(
        [(name, pyarrow.string()) for name in _FIELDS[:3]]
        + [(f"score_{label}", pyarrow.float64()) for label in labels]
        + [(name, pyarrow.string()) for name in _FIELDS[3:]]
    )
    with parquet.ParquetWriter(path, schema) as writer:
        rows: list[dict] = []
        for record in records:
            rows.append(_flat(record, labels))
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
