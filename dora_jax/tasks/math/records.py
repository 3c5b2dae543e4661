"""Problem rows from local JSON, JSONL or Parquet files, checked field by field (docs/design.md §7).

    rows = read_rows("deepscaler.jsonl", {"problem": "problem", "answer": "answer"})
    # [{"problem": "...", "answer": "..."}, ...]; a bad row raises DataError naming file and line

`fields` maps the names the code uses to the column names of the file, so a dataset whose
columns are called `question` / `final_answer` needs no conversion. Answers may be numbers
in the file (AIME sets often store `"answer": 70`); they are read as their text.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

FORMATS = ("json", "jsonl", "parquet")
NUMERIC_OK = ("answer",)  # fields a file may store as numbers (read as their text)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, the row and the fix."""


def file_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet"}.get(ext)
    if fmt is None:
        raise DataError(f"{path}: unknown data file type {ext!r}; use .json (a list of objects), .jsonl (one object "
                        "per line) or .parquet.")
    return fmt


def _not_utf8(path: str, where: str, error: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}, {where}: not UTF-8 text (byte {error.object[error.start:error.start + 1]!r} at offset "
                     f"{error.start}); JSON / JSONL data files are UTF-8. Re-save the file as UTF-8 (a UTF-16 or "
                     "binary file cannot be read).")


def _json_rows(path: str) -> Iterator[tuple[str, object]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}). A .json file holds one list of "
                            "objects; use .jsonl for one object per line.") from e
        except UnicodeDecodeError as e:
            raise _not_utf8(path, "the file", e) from e
    if isinstance(data, dict):  # {"data": [...]} as some exports write it
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, found {type(data).__name__}.")
    for i, row in enumerate(data):
        yield f"row {i}", row


def _jsonl_rows(path: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, f"line {lineno}", e) from e
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg}). Fix or delete that line.") from e


def _parquet_rows(path: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq  # a transformers / datasets dependency; only needed for Parquet

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e}).") from e
    for i, row in enumerate(table.to_pylist()):
        yield f"row {i}", row


def read_rows(path: str, fields: dict[str, str], optional: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Every row of `path` as {name: text} for the names in `fields` (name -> column in the file).

    A missing file, bad JSON, a row that is not an object, a missing required column or a value
    that is not text (or a number, for answers) raises DataError with the file and line/row.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such data file. Point the config at a local .json, .jsonl or .parquet file "
                        "(nothing is downloaded).")
    reader = {"json": _json_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}[file_format(path)]
    out = []
    for where, row in reader(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}, {where}: expected an object with fields {sorted(fields.values())}, "
                            f"found {type(row).__name__}.")
        item = {}
        for name, column in fields.items():
            value = row.get(column)
            if value is None:
                if name in optional:
                    continue
                if column in row:
                    raise DataError(f"{path}, {where}: field {column!r} is null. Give it a value or delete the row.")
                raise DataError(f"{path}, {where}: missing field {column!r} (has {sorted(row)}). Fix the row, or "
                                f"map the field with --config.task.{name}_field=COLUMN.")
            # Answers may be stored as numbers (AIME sets do); every other field is text.
            allowed = (str, int, float) if name in NUMERIC_OK else (str,)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise DataError(f"{path}, {where}: field {column!r} must be text, found {type(value).__name__} "
                                f"({str(value)[:60]!r}). Check that --config.task.{name}_field names the right "
                                "column.")
            item[name] = value if isinstance(value, str) else _number_text(value)
        out.append(item)
    if not out:
        raise DataError(f"{path}: the file holds no rows.")
    return out


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
