"""Reading problem rows: every format, field mapping, and malformed rows named by file and line."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dora_jax.tasks.math.records import DataError, read_rows

FIELDS = {"problem": "problem", "answer": "answer"}


def test_json_jsonl_and_parquet_give_the_same_rows(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2", "solution": "..."}, {"problem": "Half of 1?", "answer": 0.5}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pq.write_table(pa.Table.from_pylist([{"problem": r["problem"], "answer": str(r["answer"])} for r in rows]),
                   tmp_path / "a.parquet")
    want = [{"problem": "1+1?", "answer": "2"}, {"problem": "Half of 1?", "answer": "0.5"}]
    for name in ("a.json", "a.jsonl", "a.parquet"):
        assert read_rows(str(tmp_path / name), FIELDS) == want, name


def test_field_names_map_and_integer_answers_read_as_text(tmp_path):
    (tmp_path / "aime.jsonl").write_text(json.dumps({"question": "Find n.", "final": 70.0}) + "\n")
    assert read_rows(str(tmp_path / "aime.jsonl"), {"problem": "question", "answer": "final"}) == [
        {"problem": "Find n.", "answer": "70"}]


@pytest.mark.parametrize("content, where, cause", [
    ('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n', "line 2", "missing field 'answer'"),
    ('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": ', "line 3", "not valid JSON"),
    ('{"problem": ["a"], "answer": "1"}\n', "line 1", "must be text, found list"),
    ('{"problem": "a", "answer": true}\n', "line 1", "must be text, found bool"),
    ('["a", "1"]\n', "line 1", "expected an object"),
])
def test_malformed_jsonl_rows_name_file_and_line(tmp_path, content, where, cause):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as e:
        read_rows(str(path), FIELDS)
    assert str(path) in str(e.value) and where in str(e.value) and cause in str(e.value)


def test_malformed_json_and_parquet_name_the_row(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"problem": "a", "answer": "1"}, {"answer": "2"}]))
    with pytest.raises(DataError, match=r"a\.json, row 1: missing field 'problem'"):
        read_rows(str(tmp_path / "a.json"), FIELDS)
    (tmp_path / "b.json").write_text('[{"problem": "a",\n "answer": }]')
    with pytest.raises(DataError, match=r"b\.json, line 2: not valid JSON"):
        read_rows(str(tmp_path / "b.json"), FIELDS)
    pq.write_table(pa.Table.from_pylist([{"problem": "a", "answer": "1"}, {"problem": None, "answer": "2"}]),
                   tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet, row 1: field 'problem' is null"):
        read_rows(str(tmp_path / "c.parquet"), FIELDS)
    pq.write_table(pa.Table.from_pylist([{"problem": 0, "answer": 1}]), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints\.parquet, row 0: field 'problem' must be text, found int"):
        read_rows(str(tmp_path / "ints.parquet"), FIELDS)
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"d\.parquet: cannot be read as Parquet"):
        read_rows(str(tmp_path / "d.parquet"), FIELDS)


def test_null_fields_and_files_that_are_not_utf8_are_named(tmp_path):
    (tmp_path / "null.jsonl").write_text('{"problem": null, "answer": "1"}\n')
    with pytest.raises(DataError, match=r"null\.jsonl, line 1: field 'problem' is null"):
        read_rows(str(tmp_path / "null.jsonl"), FIELDS)
    row = json.dumps({"problem": "a", "answer": "1"}) + "\n"
    (tmp_path / "utf16.jsonl").write_bytes(row.encode("utf-16"))
    with pytest.raises(DataError, match=r"utf16\.jsonl, line 1: not UTF-8 text .* Re-save the file as UTF-8"):
        read_rows(str(tmp_path / "utf16.jsonl"), FIELDS)
    (tmp_path / "binary.jsonl").write_bytes(row.encode() + bytes(range(128, 256)) + b"\n")
    with pytest.raises(DataError, match=r"binary\.jsonl, line 2: not UTF-8 text"):
        read_rows(str(tmp_path / "binary.jsonl"), FIELDS)
    (tmp_path / "utf16.json").write_bytes(json.dumps([{"problem": "a", "answer": "1"}]).encode("utf-16"))
    with pytest.raises(DataError, match=r"utf16\.json, the file: not UTF-8 text"):
        read_rows(str(tmp_path / "utf16.json"), FIELDS)


def test_missing_file_unknown_type_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_rows(str(tmp_path / "none.jsonl"), FIELDS)
    (tmp_path / "a.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match="unknown data file type 'csv'"):
        read_rows(str(tmp_path / "a.csv"), FIELDS)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_rows(str(tmp_path / "e.jsonl"), FIELDS)
