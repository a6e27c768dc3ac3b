"""Scan records on disk: JSON Lines (nested scores), CSV and Parquet (one `score_<label>` column per label).

Records of a scan against a known-item index also carry `match`: nested in JSON Lines, `match_<field>` columns in
CSV and Parquet (present only in such files, so files of plain scans keep their columns).

`flat_columns` and `flatten` define that flat layout once: `wildvision.spark` writes the same columns.

Writing is atomic (a temporary file renamed into place) and streams record by record, so converting a journal of
millions of records needs no more memory than one Parquet row group. Parquet needs `pip install wildvision[parquet]`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = ["FORMATS", "flat_columns", "flatten", "format_of", "read_records", "write_records"]

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_FIELDS = ("path", "label", "decision", "model_name", "model_version", "error", "error_category")
_MATCH_FIELDS = {"id": int, "reference": str, "hash_distance": int, "cosine": float}  # `Match.to_dict()`, typed
_ROW_GROUP = 10_000  # Parquet rows buffered before each write


def format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}") from None


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
    """The columns of CSV and Parquet records in order, each with its Python type (`str`, `float` or `int`)."""
    matches = [(f"match_{name}", kind) for name, kind in _MATCH_FIELDS.items()] if with_match else []
    return [
        *((name, str) for name in _FIELDS[:3]), *((f"score_{label}", float) for label in labels),
        *((name, str) for name in _FIELDS[3:]), *matches,
    ]


def flatten(record: dict, labels: Sequence[str], *, with_match: bool = False) -> dict:
    """A record (`ScanRecord.to_dict()`) as one flat row, keys in `flat_columns` order."""
    scores, match = record["scores"] or {}, record.get("match") or {}
    values = {**record, **{f"score_{label}": scores.get(label) for label in labels},
              **{f"match_{name}": match.get(name) for name in _MATCH_FIELDS}}
    return {name: values[name] for name, _ in flat_columns(labels, with_match=with_match)}


def _nested(row: dict, labels: Sequence[str]) -> dict:
    """A flat row back to a record; CSV's empty strings mean null, and its numbers come back typed."""
    value = {name: (row[name] if row[name] != "" else None) for name in row}
    scored = value["error"] is None
    scores = {label: float(value[f"score_{label}"]) for label in labels} if scored else None
    record = {"path": value["path"], "scores": scores, **{name: value[name] for name in _FIELDS[1:]}}
    if "match_id" in value:
        matched = value["match_id"] is not None
        record["match"] = {name: kind(value[f"match_{name}"]) for name, kind in _MATCH_FIELDS.items()} if matched else None
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
