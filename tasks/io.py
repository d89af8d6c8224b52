"""Reading benchmark files with errors that name the file, row and field."""
from __future__ import annotations

import json
from pathlib import Path

from tasks.base import DataError


def require_file(path: str | Path) -> Path:
    """The path as a Path. Raises DataError when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def read_records(path: str | Path) -> list[dict]:
    """Rows of a .jsonl, .json (a list of objects) or .parquet file.

    Raises:
        DataError: missing file, unknown suffix, a line that is not JSON or not an object
            (file and 1-based line named).
    """
    path = require_file(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = _parse_json(path, text)
    elif path.suffix == ".jsonl":
        rows = [_parse_line(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
    return rows


def _parse_json(path: Path, text: str) -> list[dict]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return rows


def _parse_line(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}, line {number}: expected a JSON object")
    return row


def require_fields(path: str | Path, number: int, row: dict, fields: tuple[str, ...]) -> None:
    """Raises DataError naming file, row and field when a field is missing or not a non-empty string."""
    for name in fields:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            problem = "missing" if name not in row else f"not a non-empty string ({value!r:.40})"
            raise DataError(f"{path}, row {number}: field {name!r} is {problem}")
