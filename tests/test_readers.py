"""Tests of scoreplex.data.readers: formats, row numbers, column mapping and every user-facing data error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from scoreplex.data import MISSING, ColumnMap, read_responses, read_table, write_table
from scoreplex.errors import ConfigError, DataError
from scoreplex.tasks import TaskSpec

FORMATS = ["csv", "tsv", "jsonl", "parquet"]
TEXTS = [
    'She said "yes", then left.',  # comma and quotes
    "line one\nline two",  # newline inside a text
    "  leading and trailing spaces  ",  # kept exactly
    "Ünïcödé — 数学 ✓",
]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def rows_fixture() -> list[dict]:
    return [
        {"id": "r1", "task": "q1", "text": TEXTS[0], "score": 2, "score2": 2},
        {"id": "r2", "task": "q2", "text": TEXTS[1], "score": 0, "score2": None},
        {"id": "r3", "task": "q1", "text": TEXTS[2], "score": 1, "score2": 0},
        {"id": "r4", "task": "q2", "text": TEXTS[3], "score": 3, "score2": 3},
    ]


def check_error(exc: pytest.ExceptionInfo, path: Path, row: int | None, column: str | None) -> str:
    """The error is a DataError and a ValueError, and names the file, row and column."""
    err = exc.value
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    msg = str(err)
    assert err.file == str(path) and str(path) in msg
    assert err.row == row
    if row is not None:
        assert f"row {row}" in msg
    assert err.column == column
    if column is not None:
        assert repr(column) in msg
    assert err.fix and "Fix:" in msg
    return msg


# -- formats and round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_all_formats(tmp_path, fmt):
    path = write_table(tmp_path / f"responses.{fmt}", rows_fixture())
    assert path == tmp_path / f"responses.{fmt}"
    tasks = {"q1": TaskSpec.ordinal("q1", 2), "q2": TaskSpec.ordinal("q2", 3)}
    data = read_responses(path, ColumnMap(second={"score": "score2"}), tasks)
    assert list(data) == ["q1", "q2"]
    q1, q2 = data["q1"], data["q2"]
    assert q1.ids == ["r1", "r3"] and q2.ids == ["r2", "r4"]
    assert q1.texts == [TEXTS[0], TEXTS[2]] and q2.texts == [TEXTS[1], TEXTS[3]]
    assert q1.labels.tolist() == [[2], [1]] and q2.labels.tolist() == [[0], [3]]
    assert q1.second.tolist() == [[2], [0]] and q2.second.tolist() == [[MISSING], [3]]
    assert q1.labels.dtype == np.int64 and q1.spec is tasks["q1"]
    assert q1.source == str(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_table_cells_are_strings(tmp_path, fmt):
    path = write_table(tmp_path / f"t.{fmt}", rows_fixture())
    table = read_table(path)
    assert table.columns == ["id", "task", "text", "score", "score2"]
    assert len(table) == 4 and all(isinstance(v, str) for rec in table for v in rec.values())
    assert [rec["text"] for rec in table] == TEXTS
    assert table[1]["score2"] == "" and table[0]["score"] == "2"


def test_row_numbers_follow_the_file(tmp_path):
    # CSV: header is line 1; a record with a two-line text is numbered by its first line; blank lines are counted
    csv_path = write(tmp_path / "a.csv", 'id,text\nr1,"two\nlines"\n\nr2,plain\n')
    assert read_table(csv_path).rows == [2, 5]
    jsonl_path = write(tmp_path / "a.jsonl", '{"id": "r1", "text": "x"}\n\n{"id": "r2", "text": "y"}\n')
    assert read_table(jsonl_path).rows == [1, 3]
    pq_path = write_table(tmp_path / "a.parquet", [{"id": "r1", "text": "x"}, {"id": "r2", "text": "y"}])
    assert read_table(pq_path).rows == [1, 2]


def test_fmt_overrides_extension_and_txt_is_tab_separated(tmp_path):
    txt = write(tmp_path / "a.txt", "id\ttext\tscore\nr1\thello, world\t1\n")
    assert read_table(txt)[0] == {"id": "r1", "text": "hello, world", "score": "1"}
    odd = write(tmp_path / "a.data", "id,text\nr1,hi\n")
    assert read_table(odd, fmt="csv")[0] == {"id": "r1", "text": "hi"}


def test_unknown_extension(tmp_path):
    path = write(tmp_path / "a.xlsx", "x")
    with pytest.raises(DataError) as exc:
        read_table(path)
    msg = str(exc.value)
    assert str(path) in msg and ".csv" in msg and ".jsonl" in msg and ".parquet" in msg and "fmt=" in msg
    with pytest.raises(ConfigError, match="csv, tsv, jsonl, parquet"):
        read_table(path, fmt="xlsx")


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")


def test_jsonl_nulls_bools_and_missing_keys(tmp_path):
    path = write(
        tmp_path / "a.jsonl",
        '{"id": 1, "text": "a", "ok": true, "score": 2.0, "extra": [1, 2]}\n{"id": 2, "text": "b", "score": null}\n',
    )
    table = read_table(path)
    assert table.columns == ["id", "text", "ok", "score", "extra"]
    assert table[0] == {"id": "1", "text": "a", "ok": "1", "score": "2", "extra": "[1, 2]"}
    assert table[1] == {"id": "2", "text": "b", "ok": "", "score": "", "extra": ""}


def test_malformed_json_line(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"id": "r1", "text": "ok"}\n{"id": "r2", "text": "broken\n')
    with pytest.raises(DataError) as exc:
        read_table(path)
    check_error(exc, path, 2, None)
    path = write(tmp_path / "b.jsonl", '["not", "an", "object"]\n')
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert exc.value.row == 1 and "JSON object" in str(exc.value)


# -- encodings and quoting -----------------------------------------------------------------------------------------


def test_latin1_bytes_in_a_utf8_read(tmp_path):
    path = write(tmp_path / "a.csv", "id,text,score\nr1,plain,1\nr2,caf\u00e9 au lait,2\n", encoding="latin-1")
    with pytest.raises(DataError) as exc:
        read_responses(path, ColumnMap(task=None, task_id="q1"))
    msg = check_error(exc, path, 3, "text")
    assert "utf-8" in msg and "0xe9" in msg and "latin-1" in msg and "UTF-8" in msg
    data = read_responses(path, ColumnMap(task=None, task_id="q1"), encoding="latin-1")
    assert data["q1"].texts == ["plain", "caf\u00e9 au lait"]


def test_bad_bytes_in_jsonl_name_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as exc:
        read_table(path)
    check_error(exc, path, 2, "text")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text,score\r\nr1,hello,1\r\nr2,bye,0\r\n")
    table = read_table(path)
    assert table.columns == ["id", "text", "score"] and table.rows == [2, 3]
    data = read_responses(path, ColumnMap(task=None, task_id="q1"))
    assert data["q1"].ids == ["r1", "r2"] and data["q1"].texts == ["hello", "bye"]
    # a bad byte after a BOM still names the right line
    path.write_bytes(b"\xef\xbb\xbfid,text\nr1,ok\n\xe9r2,x\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "0xe9" in check_error(exc, path, 3, "id")


def test_quoting_none_keeps_stray_quotes(tmp_path):
    texts = ['"The answer is no', 'He said "maybe', 'end quote"', '"fully quoted"']
    body = "".join(f"r{i}\tq1\t{t}\t1\n" for i, t in enumerate(texts))
    path = write(tmp_path / "asap.tsv", "id\ttask\ttext\tscore\n" + body)
    data = read_responses(path, ColumnMap(), quoting="none")
    assert data["q1"].texts == texts  # quotes are text, nothing swallowed
    # with quote handling, the unbalanced opening quote swallows the next record and the outer quotes are lost
    table = read_table(path)
    assert len(table) == 3 and "\n" in table[0]["text"] and table[2]["text"] == "fully quoted"


def test_field_count_mismatch(tmp_path):
    path = write(tmp_path / "a.tsv", "id\ttext\nr1\thas\ta tab\n")
    with pytest.raises(DataError) as exc:
        read_table(path, quoting="none")
    check_error(exc, path, 2, None)
    assert "3 fields" in str(exc.value)


def test_bad_options(tmp_path):
    path = write(tmp_path / "a.csv", "id,text\nr1,x\n")
    with pytest.raises(ConfigError, match="quoting"):
        read_table(path, quoting="all")
    with pytest.raises(ConfigError, match="encoding"):
        read_table(path, encoding="no-such-codec")


# -- column mapping ------------------------------------------------------------------------------------------------


def test_column_map_validation():
    assert ColumnMap(task_id="q1").task is None  # a fixed task id means no task column
    with pytest.raises(ConfigError, match="task_id"):
        ColumnMap(task=None)
    with pytest.raises(ConfigError, match="both"):
        ColumnMap(task="EssaySet", task_id="q1")
    with pytest.raises(ConfigError, match="not a valid id"):
        ColumnMap(task_id="bad id")
    with pytest.raises(ConfigError, match="text"):
        ColumnMap(text="")
    with pytest.raises(ConfigError, match="labels"):
        ColumnMap(labels={})
    with pytest.raises(ConfigError, match="more than one"):
        ColumnMap(labels={"a": "x", "b": "x"})
    with pytest.raises(ConfigError, match="first and second"):
        ColumnMap(labels={"score": "s"}, second={"score": "s"})
    assert isinstance(ConfigError("x"), ValueError)


def test_custom_columns_and_task_mapping(tmp_path):
    path = write(tmp_path / "a.tsv", "Id\tSet\tAnswer\tS1\tS2\n7\t1\tfoo\t2\t\n8\t2\tbar\t0\t1\n9\t1\tbaz\t1\t1\n")
    specs = {"1": TaskSpec.ordinal("item-1", 2), "2": TaskSpec.ordinal("item-2", 1)}
    columns = ColumnMap(text="Answer", task="Set", id="Id", labels={"score": "S1"}, second={"score": "S2"})
    data = read_responses(path, columns, specs)
    assert list(data) == ["item-1", "item-2"]  # keyed by spec id
    assert data["item-1"].ids == ["7", "9"] and data["item-1"].second.tolist() == [[MISSING], [1]]
    assert data["item-2"].labels.tolist() == [[0]]


def test_generated_ids_when_no_id_column(tmp_path):
    path = write(tmp_path / "answers.csv", "text,score\nfirst,1\nsecond,0\n")
    data = read_responses(path, ColumnMap(task_id="q1"))
    assert data["q1"].ids == ["answers:2", "answers:3"]
    assert read_responses(path, ColumnMap(task_id="q1", id=None))["q1"].ids == ["answers:2", "answers:3"]


@pytest.mark.parametrize("name", ["score", "label", "quality"])
def test_single_dimension_score_column_names(tmp_path, name):
    path = write(tmp_path / "a.csv", f"id,text,{name}\nr1,x,1\n")
    spec = TaskSpec.ordinal("q1", 2, name="quality")
    data = read_responses(path, ColumnMap(task_id="q1"), {"q1": spec})
    assert data["q1"].labels.tolist() == [[1]]


def test_multilabel_columns(tmp_path):
    path = write(
        tmp_path / "ngss.csv",
        "id,task,text,claim,evidence,reasoning,ev2\nr1,t1,a,1,0,1,0\nr2,t1,b,0,0,0,\nr3,t1,c,1,1,1,1\n",
    )
    spec = TaskSpec.multilabel("t1", ["claim", "evidence", "reasoning"])
    data = read_responses(path, ColumnMap(second={"evidence": "ev2"}), {"t1": spec})["t1"]
    assert data.labels.shape == (3, 3)
    assert data.labels.tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
    assert data.second.tolist() == [[MISSING, 0, MISSING], [MISSING, MISSING, MISSING], [MISSING, 1, MISSING]]
    assert data.stratum_keys() == ["1|0|1", "0|0|0", "1|1|1"]
    # mapped columns
    mapped = read_responses(path, ColumnMap(labels={"claim": "reasoning", "reasoning": "claim"}), {"t1": spec})["t1"]
    assert mapped.labels[:, 0].tolist() == [1, 0, 1] and mapped.labels[:, 1].tolist() == [0, 0, 1]


def test_labels_key_not_a_dimension(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,1\n")
    with pytest.raises(ConfigError, match="'sore'"):
        read_responses(path, ColumnMap(labels={"sore": "score"}), {"q1": TaskSpec.ordinal("q1", 2)})


def test_integral_float_scores_accepted(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,2.0\nr2,q1,y, 1 \n")
    assert read_responses(path)["q1"].labels.tolist() == [[2], [1]]


# -- inferred specs ------------------------------------------------------------------------------------------------


def test_inferred_specs(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score,s2\nr1,q1,a,0,3\nr2,q1,b,2,\nr3,q2,c,0,0\nr4,q2,d,1,1\n")
    data = read_responses(path, ColumnMap(second={"score": "s2"}))
    assert data["q1"].spec == TaskSpec.ordinal("q1", 3)  # max over both raters of the whole file, not per task
    assert data["q2"].spec == TaskSpec.ordinal("q2", 3)  # q2's own scores stop at 1
    named = read_responses(path, ColumnMap(labels={"holistic": "score"}))
    assert named["q1"].spec.dimension_names == ["holistic"] and named["q1"].spec.class_counts == [3]
    zeros = write(tmp_path / "z.csv", "id,text,score\nr1,a,0\n")
    assert read_responses(zeros, ColumnMap(task_id="q"))["q"].spec.class_counts == [2]  # never fewer than 2
    multi = read_responses(path, ColumnMap(labels={"a": "score", "b": "s2"}), require_labels=False)["q1"]
    assert multi.spec.dimension_names == ["a", "b"] and multi.spec.class_counts == [3, 4]
    assert multi.labels.tolist() == [[0, 3], [2, MISSING]]


def test_inferred_spec_rejects_bad_task_id(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,item one,a,0\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    check_error(exc, path, 2, "task")


def test_no_specs_and_no_inference(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,a,0\n")
    with pytest.raises(ConfigError, match="tasks="):
        read_responses(path, infer_max_score=False)


def test_unscored_data(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text\nr1,q1,a\nr2,q1,b\n")
    spec = TaskSpec.ordinal("q1", 3)
    data = read_responses(path, tasks={"q1": spec}, require_labels=False)["q1"]
    assert data.labels is None and not data.has_labels and data.texts == ["a", "b"]
    partial = write(tmp_path / "b.csv", "id,task,text,score\nr1,q1,a,\nr2,q1,b,2\n")
    assert read_responses(partial, None, {"q1": spec}, require_labels=False)["q1"].labels.tolist() == [[MISSING], [2]]
    with pytest.raises(DataError, match="no scores"):
        read_responses(path, require_labels=False)


# -- data errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "missing", "option"),
    [
        (ColumnMap(text="answer"), "answer", "text="),
        (ColumnMap(task="set"), "set", "task="),
        (ColumnMap(id="ResponseId"), "ResponseId", "id="),
        (ColumnMap(labels={"score": "S1"}), "S1", "labels="),
        (ColumnMap(second={"score": "S2"}), "S2", "second="),
    ],
)
def test_missing_column(tmp_path, columns, missing, option):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,1\n")
    with pytest.raises(DataError) as exc:
        read_responses(path, columns, {"q1": TaskSpec.ordinal("q1", 2)})
    msg = check_error(exc, path, 1, missing)
    assert "id, task, text, score" in msg and option in msg


def test_missing_score_column(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,points\nr1,q1,x,1\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    msg = check_error(exc, path, 1, "score")
    assert exc.value.task == "q1" and "points" in msg and "labels=" in msg


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty_text(tmp_path, text):
    path = write(tmp_path / "a.jsonl", json.dumps({"id": "r1", "task": "q1", "text": "ok", "score": 1}) + "\n"
                 + json.dumps({"id": "r2", "task": "q1", "text": text, "score": 1}) + "\n")  # fmt: skip
    with pytest.raises(DataError) as exc:
        read_responses(path)
    msg = check_error(exc, path, 2, "text")
    assert exc.value.task == "q1" and "empty" in msg


@pytest.mark.parametrize("cell", ["two", "nan", "3-4", "B"])
def test_label_not_an_integer(tmp_path, cell):
    path = write(tmp_path / "a.csv", f"id,task,text,score\nr1,q1,x,1\nr2,q1,y,{cell}\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    msg = check_error(exc, path, 3, "score")
    assert "not an integer" in msg and exc.value.task == "q1"


@pytest.mark.parametrize("cell", ["4", "-1"])
def test_label_outside_declared_range(tmp_path, cell):
    path = write(tmp_path / "a.csv", f"id,task,text,score\nr1,q1,x,{cell}\n")
    with pytest.raises(DataError) as exc:
        read_responses(path, tasks={"q1": TaskSpec.ordinal("q1", 3)})
    msg = check_error(exc, path, 2, "score")
    assert "0..3" in msg


def test_second_rater_outside_range(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score,s2\nr1,q1,x,1,\nr2,q1,y,1,5\n")
    with pytest.raises(DataError) as exc:
        read_responses(path, ColumnMap(second={"score": "s2"}), {"q1": TaskSpec.ordinal("q1", 2)})
    check_error(exc, path, 3, "s2")


def test_negative_label_when_inferring(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,-2\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    check_error(exc, path, 2, "score")


def test_duplicate_ids_name_both_rows(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,1\nr2,q2,y,1\nr1,q2,z,0\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    msg = check_error(exc, path, 4, "id")
    assert "rows 2 and 4" in msg and "'r1'" in msg


def test_unknown_task_id(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,1\nr2,q9,y,1\n")
    tasks = {"q1": TaskSpec.ordinal("q1", 2), "q2": TaskSpec.ordinal("q2", 2)}
    with pytest.raises(DataError) as exc:
        read_responses(path, tasks=tasks)
    msg = check_error(exc, path, 3, "task")
    assert "'q9'" in msg and "q1, q2" in msg


def test_missing_label(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,x,1\nr2,q1,y,\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    msg = check_error(exc, path, 3, "score")
    assert "missing" in msg and "require_labels=False" in msg


def test_empty_file(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\n")
    with pytest.raises(DataError, match="no responses"):
        read_responses(path)
    with pytest.raises(DataError, match="empty"):
        read_table(write(tmp_path / "b.csv", ""))


# -- writing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_table_is_atomic(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_table(path, [{"a": 1, "b": "x"}])
    before = path.read_bytes()

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises((RuntimeError, DataError, TypeError)):
        write_table(path, [{"a": 1, "b": Boom()}])
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    assert os.stat(path).st_mode & 0o644 == 0o644


def test_write_table_column_order_and_numpy_values(tmp_path):
    rows = [{"b": np.int64(1), "a": "x"}, {"a": "y", "c": np.float32(0.5)}]
    for fmt in FORMATS:
        path = write_table(tmp_path / f"o.{fmt}", rows)
        table = read_table(path)
        assert table.columns == ["b", "a", "c"]
        assert table[0]["b"] == "1" and table[1]["c"] == "0.5" and table[1]["b"] == ""
    path = write_table(tmp_path / "fixed.csv", rows, columns=["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "x,1", "y,"]
