"""Reading benchmark files with errors that name the file, row and field.

Row numbers in messages are 1-based: the line number in a .jsonl file (blank lines count, so an
editor's "go to line" finds the row), the record number in .json/.parquet files and in CSV files
(header excluded).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from loopdistill.tasks.base import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")


def row_error(source: str | Path, number: int, field: str, problem: str) -> DataError:
    """DataError "<source>, row <number>: field '<field>' <problem>" (raise it at the call site)."""
    return DataError(f"{source}, row {number}: field {field!r} {problem}")


def require_file(path: str | Path) -> Path:
    """The path as a Path. Raises DataError naming the path when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def read_numbered(path: str | Path) -> list[tuple[int, dict]]:
    """(1-based row number, record) pairs of a .jsonl, .json (a list of objects) or .parquet file.

    Raises:
        DataError: missing file, unknown suffix, undecodable text, a line or file that is not JSON,
            a record that is not an object, an unreadable Parquet file (file and line named).
    """
    path = require_file(path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
    if path.suffix == ".parquet":
        return list(enumerate(_read_parquet(path), 1))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from None
    if path.suffix == ".json":
        return [(n, _as_object(path, n, row)) for n, row in enumerate(_parse_json(path, text), 1)]
    lines = enumerate(text.splitlines(), 1)
    return [(n, _parse_line(path, n, line)) for n, line in lines if line.strip()]


def require_fields(source: str | Path, number: int, row: Any, fields: Iterable[str]) -> None:
    """Raises DataError naming source, row and field when a field is missing or not a non-empty string."""
    for name in fields:
        value = row.get(name) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            problem = "is missing" if not isinstance(row, dict) or name not in row else f"is not a non-empty string ({value!r:.40})"
            raise row_error(source, number, name, problem)


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def _parse_json(path: Path, text: str) -> list:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return rows


def _parse_line(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    return _as_object(path, number, row)


def _as_object(path: Path, number: int, row: Any) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{path}, row {number}: expected a JSON object, got {type(row).__name__}")
    return row
