"""Scan records on disk: JSON Lines (nested scores), CSV and Parquet (one `score_<label>` column per label).

Records of a scan against a known-item index also carry `match`, and those of a scan that reads text carry `text`:
nested in JSON Lines, flat columns in CSV and Parquet (present only in such files, so files of plain scans keep their
columns). `RecordLayout` says which a scan's records have.

`ScanRecord` is the one definition of a record; `RecordLayout` derives the flat columns from it, and
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
from typing import Iterable, Iterator, Sequence, get_args, get_type_hints

from wildvision.classifier import ModelIdentity, Prediction
from wildvision.decision import Decision
from wildvision.errors import WildvisionError
from wildvision.images import ErrorCategory, ImageLoadError
from wildvision.known_items import Match

__all__ = [
    "FORMATS", "OPTIONAL_PARTS", "RecordFormatError", "RecordLayout", "ScanRecord", "columns_of", "format_of",
    "read_records", "write_records",
]

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_ROW_GROUP = 10_000  # Parquet rows buffered before each write


@dataclass(frozen=True)
class ScanRecord:
    """One input file's outcome: scores and a decision, or an error saying why it could not be scored; always the
    model file that scored it (`Prediction`'s fields) and, when scored, the thresholds that decided.

    The one definition of a record: JSON Lines writes it as is; CSV, Parquet and Spark flatten it (`RecordLayout`).
    The last fields are parts that only some scans have (`OPTIONAL_PARTS`): `match`, the known item a photo re-posts
    (`Match.to_dict()`, scans with `--match-index`), and `text`, what was read on the photo and what counted
    (`TextEvidence.to_dict()`, scans with `--read-text`)."""

    path: str
    label: str | None  # the prohibited label the decision is about; null when allowed or not scored
    top_label: str | None  # the most probable label, whatever was decided; null when not scored
    decision: Decision | None
    scores: dict[str, float] | None  # flattened to one `score_<label>` column per label
    model_name: str
    model_version: str
    model_precision: str
    model_digest: str
    thresholds: str | None
    error: str | None = None
    error_category: ErrorCategory | None = None
    match: dict[str, object] | None = None  # flattened to one `match_<field>` column per `Match` field
    text: dict[str, object] | None = None  # flattened to `text_labels` and `text_evidence` (the whole part as JSON)

    @classmethod
    def scored(cls, path: str, prediction: Prediction, *, match: Match | None = None) -> ScanRecord:
        values = {name: value for name, value in prediction.to_dict().items() if name in _FIELD_NAMES}
        return cls(path=path, **values, match=match.to_dict() if match else None)

    @classmethod
    def failed(cls, path: str, error: ImageLoadError, identity: ModelIdentity) -> ScanRecord:
        return cls(path=path, label=None, top_label=None, decision=None, scores=None, **identity.to_fields(), thresholds=None,
                   error=error.reason, error_category=error.category)


_FIELD_NAMES = frozenset(field.name for field in fields(ScanRecord))
OPTIONAL_PARTS = ("match", "text")
# Flat column types: every plain field is text, scores are floats, and a match's fields keep Match's own types (a
# signal one side lacks is null: `int | None` is an int column).
_MATCH_TYPES: dict[str, type] = {name: next(kind for kind in get_args(hint) or (hint,) if kind is not type(None))
                                 for name, hint in get_type_hints(Match).items()}
_TEXT_COLUMNS = ("text_labels", "text_evidence")


@dataclass(frozen=True)
class RecordLayout:
    """The shape of one scan's records: its model's labels (one score each) and the optional parts it adds. Records
    of a plain scan keep exactly the plain fields and columns; a scan's layout is fixed for its whole output."""

    labels: tuple[str, ...]
    match: bool = False  # a scan against a known-item index
    text: bool = False  # a scan that reads the text on photos

    @classmethod
    def of_columns(cls, columns: Sequence[str]) -> RecordLayout:
        """The layout a flat file's columns were written in."""
        labels = tuple(name.removeprefix("score_") for name in columns if name.startswith("score_"))
        return cls(labels, match="match_id" in columns, text="text_evidence" in columns)

    def to_dict(self, record: ScanRecord) -> dict[str, object]:
        """The record as JSON Lines holds it: its plain fields and this layout's parts."""
        value = asdict(record)
        return {name: value[name] for name in self.field_names}

    @property
    def columns(self) -> list[tuple[str, type]]:
        """The columns of CSV and Parquet records in `ScanRecord`'s field order, `scores`, `match` and `text`
        expanded, each with its Python type (`str`, `float` or `int`)."""
        return list(_flat_columns(self))

    @property
    def field_names(self) -> list[str]:
        """The fields of a record as JSON Lines holds it (`to_dict`)."""
        return [field.name for field in fields(ScanRecord)
                if field.name not in OPTIONAL_PARTS or getattr(self, field.name)]

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in _flat_columns(self)]

    def flatten(self, record: dict) -> dict:
        """A record (`to_dict`) as one flat row, keys in `columns` order."""
        scores, match, text = record["scores"] or {}, record.get("match") or {}, record.get("text")
        values = {**record, **{f"score_{label}": scores.get(label) for label in self.labels},
                  **{f"match_{name}": match.get(name) for name in _MATCH_TYPES}}
        if text is not None:
            labels = dict.fromkeys(item["label"] for item in text["matches"])  # type: ignore[index]
            values |= {"text_labels": ";".join(labels), "text_evidence": json.dumps(text, ensure_ascii=False)}
        return {name: values.get(name) for name, _ in _flat_columns(self)}

    def nested(self, row: dict) -> dict:
        """A flat row back to a record; CSV's empty strings mean null, and its numbers come back typed."""
        value = {name: (row[name] if row[name] != "" else None) for name in row}
        scored = value["error"] is None
        record: dict[str, object] = {}
        for field in fields(ScanRecord):
            if field.name == "scores":
                record["scores"] = ({label: float(value[f"score_{label}"]) for label in self.labels} if scored
                                    else None)
            elif field.name == "match":
                if self.match:
                    record["match"] = ({name: None if value[f"match_{name}"] is None else kind(value[f"match_{name}"])
                                        for name, kind in _MATCH_TYPES.items()}
                                       if value["match_id"] is not None else None)
            elif field.name == "text":
                if self.text:
                    record["text"] = json.loads(value["text_evidence"]) if value["text_evidence"] else None
            else:
                record[field.name] = value.get(field.name)
        return record


@functools.cache
def _flat_columns(layout: RecordLayout) -> tuple[tuple[str, type], ...]:
    """Derived once per layout: `flatten` asks for every row it writes."""
    columns: list[tuple[str, type]] = []
    for field in fields(ScanRecord):
        if field.name == "scores":
            columns += [(f"score_{label}", float) for label in layout.labels]
        elif field.name == "match":
            columns += [(f"match_{name}", kind) for name, kind in _MATCH_TYPES.items()] if layout.match else []
        elif field.name == "text":
            columns += [(name, str) for name in _TEXT_COLUMNS] if layout.text else []
        else:
            columns.append((field.name, str))
    return tuple(columns)


class RecordFormatError(WildvisionError, ValueError):
    """An output file whose format or columns wildvision cannot write or continue."""


def format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise RecordFormatError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}") from None


def write_records(records: Iterable[dict], path: Path, layout: RecordLayout) -> None:
    """Write `records` (`RecordLayout.to_dict`) to `path` in the format its suffix names, replacing it atomically."""
    kind = format_of(path)
    partial = path.with_name(path.name + ".tmp")
    if kind == "jsonl":
        with partial.open("w", encoding="utf-8") as sink:
            sink.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    elif kind == "csv":
        with partial.open("w", encoding="utf-8", newline="") as sink:
            writer = csv.DictWriter(sink, fieldnames=layout.column_names)
            writer.writeheader()
            writer.writerows(layout.flatten(record) for record in records)
    else:
        _write_parquet(records, partial, layout)
    os.replace(partial, path)


def read_records(path: Path) -> Iterator[dict]:
    """Records as `RecordLayout.to_dict` gives them, whatever the file's format (a flat file's columns say its
    layout)."""
    kind = format_of(path)
    if kind == "jsonl":
        with path.open(encoding="utf-8") as source:
            yield from (json.loads(line) for line in source if line.strip())
    elif kind == "csv":
        with path.open(encoding="utf-8", newline="") as source:
            rows = csv.DictReader(source)
            layout = RecordLayout.of_columns(rows.fieldnames or [])
            yield from (layout.nested(row) for row in rows)
    else:
        file = _pyarrow_parquet().ParquetFile(path)
        layout = RecordLayout.of_columns(file.schema_arrow.names)
        for batch in file.iter_batches():
            yield from (layout.nested(row) for row in batch.to_pylist())


def columns_of(path: Path) -> list[str] | None:
    """The flat columns of an existing CSV or Parquet records file (None for JSON Lines, which has no header)."""
    kind = format_of(path)
    if kind == "csv":
        with path.open(encoding="utf-8", newline="") as source:
            return next(csv.reader(source), [])
    if kind == "parquet":
        return _pyarrow_parquet().read_schema(path).names
    return None


def _write_parquet(records: Iterable[dict], path: Path, layout: RecordLayout) -> None:
    parquet = _pyarrow_parquet()
    import pyarrow

    types = {int: pyarrow.int64(), str: pyarrow.string(), float: pyarrow.float64()}
    schema = pyarrow.schema([(name, types[kind]) for name, kind in layout.columns])
    with parquet.ParquetWriter(path, schema) as writer:
        rows: list[dict] = []
        for record in records:
            rows.append(layout.flatten(record))
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
