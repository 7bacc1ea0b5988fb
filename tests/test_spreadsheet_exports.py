"""Tests of scoreplex.data.readers on real spreadsheet exports: delimiters, encodings, Excel's empty columns, invisible
characters in header names and long cells. Each input either reads, or raises a DataError naming file, row, column
and a fix."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pytest
from tests.test_readers import check_error

from scoreplex.data import ColumnMap, read_responses, read_table, readers
from scoreplex.data.readers import iter_table
from scoreplex.errors import ConfigError, DataError

SINGLE = ColumnMap(task_id="q1")
CURLY = "She said \u201cyes\u201d \u2013 then left\u2026"  # curly quotes, en dash and ellipsis: 0x93 0x94 0x96 0x85


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def streamed(path: Path, **kwargs) -> list[dict[str, str]]:
    """All records of ``path`` read by iter_table two at a time."""
    return [record for chunk in iter_table(path, chunk_rows=2, **kwargs) for record in chunk]


# -- delimiters ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_delimiter_is_detected_from_the_header(tmp_path, delimiter):
    d = delimiter
    # texts hold commas (a ';' export is made where the comma is the decimal separator)
    body = f'id{d}text{d}score\r\nr1{d}Hallo, Welt{d}2\r\nr2{d}"quoted{d} with delimiter"{d}1\r\nr3{d}2,5 kg{d}0\r\n'
    path = write(tmp_path / "export.csv", body)
    table = read_table(path)
    assert table.columns == ["id", "text", "score"] and table.delimiter == d
    assert [r["text"] for r in table] == ["Hallo, Welt", f"quoted{d} with delimiter", "2,5 kg"]
    assert table.rows == [2, 3, 4]
    assert streamed(path) == list(table)
    data = read_responses(path, SINGLE)["q1"]
    assert data.ids == ["r1", "r2", "r3"] and data.labels.tolist() == [[2], [1], [0]]


def test_delimiter_detection_ties_quotes_and_blank_lines(tmp_path):
    # delimiters inside quoted names do not count; blank lines before the header are skipped
    path = write(tmp_path / "a.csv", '\n"a;b;c",text\nx;y,hello\n')
    table = read_table(path)
    assert table.columns == ["a;b;c", "text"] and table[0] == {"a;b;c": "x;y", "text": "hello"}
    assert table.header_row == 2 and table.rows == [3]
    # a tie, or a one-column file, reads as comma-separated (as before)
    assert read_table(write(tmp_path / "b.csv", "a;b,c\n1;2,3\n")).columns == ["a;b", "c"]
    assert read_table(write(tmp_path / "c.csv", "text\nhello\n")).columns == ["text"]
    # a TSV file is tab-separated whatever its header holds
    assert read_table(write(tmp_path / "d.tsv", "a;b;c\tx\n1;2;3\ty\n")).columns == ["a;b;c", "x"]


def test_explicit_delimiter(tmp_path):
    path = write(tmp_path / "a.csv", "id|text;note|score\nr1|x;y|1\n")
    assert read_table(path).columns == ["id", "text;note", "score"]  # detected '|'
    assert read_table(path, delimiter=";").columns == ["id|text", "note|score"]
    assert read_responses(path, ColumnMap(task_id="q1", text="text;note"), delimiter="|")["q1"].texts == ["x;y"]
    assert streamed(path, delimiter="|") == [{"id": "r1", "text;note": "x;y", "score": "1"}]
    # a wrong explicit delimiter gives one column; the missing-column error says which delimiter to pass
    semi = write(tmp_path / "b.csv", "id;text;score\nr1;x;1\n")
    with pytest.raises(DataError) as exc:
        read_responses(semi, SINGLE, delimiter=",")
    msg = check_error(exc, semi, 1, "text")
    assert "delimiter=';'" in msg


@pytest.mark.parametrize("bad", ["", ";;", '"', "\n", 3])
def test_bad_delimiter_is_a_config_error(tmp_path, bad):
    path = write(tmp_path / "a.csv", "id,text\nr1,x\n")
    with pytest.raises(ConfigError, match="delimiter"):
        read_table(path, delimiter=bad)


def test_delimiter_is_for_csv_and_tsv_only(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    with pytest.raises(ConfigError, match="CSV/TSV"):
        read_table(path, delimiter=";")
    with pytest.raises(ConfigError, match="CSV/TSV"):
        iter_table(path, delimiter=";")


# -- encodings -----------------------------------------------------------------------------------------------------


def test_cp1252_bytes_suggest_cp1252_not_latin1(tmp_path):
    path = write(tmp_path / "excel.csv", f"id,text,score\nr1,plain,1\nr2,{CURLY},2\n", encoding="cp1252")
    for read in (read_table, streamed):
        with pytest.raises(DataError) as exc:
            read(path)
        msg = check_error(exc, path, 3, "text")
        assert "0x93" in msg and "encoding='cp1252'" in msg and "--encoding cp1252" in msg
        assert "\u201c" in msg  # says what the byte is in Windows-1252
    assert read_responses(path, SINGLE, encoding="cp1252")["q1"].texts == ["plain", CURLY]
    assert read_responses(path, SINGLE, encoding="windows-1252")["q1"].texts == ["plain", CURLY]


def test_latin1_read_of_cp1252_bytes_is_refused(tmp_path):
    # latin-1 maps 0x93 to the invisible control character U+0093: refuse rather than keep it
    path = write(tmp_path / "excel.csv", f"id,text\nr1,ok\nr2,{CURLY}\n", encoding="cp1252")
    for read in (read_table, streamed):
        with pytest.raises(DataError) as exc:
            read(path, encoding="latin-1")
        msg = check_error(exc, path, 3, "text")
        assert "U+0093" in msg and "encoding='cp1252'" in msg
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\x93yes\x94"}\n')
    with pytest.raises(DataError) as exc:
        read_table(jsonl, encoding="latin-1")
    assert "cp1252" in check_error(exc, jsonl, 2, "text")
    # latin-1 text without C1 bytes still reads as latin-1
    plain = write(tmp_path / "plain.csv", "id,text\nr1,caf\u00e9\n", encoding="latin-1")
    assert read_table(plain, encoding="latin-1")[0]["text"] == "caf\u00e9"


def test_bytes_undefined_in_cp1252(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,text\nr1,ok\nr2,x\x81y\n")
    with pytest.raises(DataError) as exc:
        read_table(path, encoding="cp1252")
    msg = check_error(exc, path, 3, "text")
    assert "0x81" in msg and "cp1252" in msg and "latin-1" in msg


@pytest.mark.parametrize(
    ("name", "content", "row", "column", "offset"),
    [
        ("a.csv", b"id,text\nr1,ok\nr2,\x93quoted\x94\n", 3, "text", 17),
        ("a.tsv", b'id\ttext\nr1\t"two\nlines \xff"\n', 3, "text", 22),
        ("a.jsonl", b'{"text": "ok"}\n{"id": \xff}\n', 2, None, 22),
        # an escaped line break inside a JSON value is not a line of the file
        ("b.jsonl", b'{"text": "ok"}\n{"text": "a\\nb \xe9"}\n', 2, "text", 30),
    ],
)
def test_undecodable_byte_message_is_the_same_read_whole_or_streamed(tmp_path, name, content, row, column, offset):
    path = tmp_path / name
    path.write_bytes(content)
    messages = []
    for read in (read_table, streamed, lambda p: list(iter_table(p, chunk_rows=1))):
        with pytest.raises(DataError) as exc:
            read(path)
        msg = check_error(exc, path, row, column)
        assert f"at line {row} (byte offset {offset}) cannot be decoded as utf-8" in msg
        messages.append(msg)
    assert len(set(messages)) == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("name", ["unicode.txt", "unicode.csv"])
def test_utf16_unicode_text_with_bom_reads(tmp_path, encoding, name):
    # Excel's "Unicode text": UTF-16 with a byte-order mark, tab-separated, CRLF line ends
    text = f"id\ttext\tscore\r\nr1\t{CURLY}\t1\r\nr2\t\u6570\u5b66, \u00fcber\t0\r\n"
    bom = {"utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")  # 'utf-16' and 'utf-32' write their own mark
    path = tmp_path / name
    path.write_bytes(bom + text.encode(encoding))
    table = read_table(path)
    assert table.columns == ["id", "text", "score"] and table.rows == [2, 3]
    assert [r["text"] for r in table] == [CURLY, "\u6570\u5b66, \u00fcber"]
    assert streamed(path) == list(table)
    assert read_responses(path, SINGLE)["q1"].labels.tolist() == [[1], [0]]
    # the mark decides, whatever encoding= says
    assert read_table(path, encoding="cp1252") == table


def test_utf8_bom_wins_over_a_given_encoding(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(codecs.BOM_UTF8 + "id,text\nr1,caf\u00e9\n".encode())
    table = read_table(path, encoding="cp1252")
    assert table.columns == ["id", "text"] and table[0]["text"] == "caf\u00e9"


def test_damaged_utf16_names_the_line(tmp_path):
    path = tmp_path / "a.txt"
    good = "id\ttext\r\nr1\tok\r\nr2\tfine\r\n".encode("utf-16-le")
    path.write_bytes(codecs.BOM_UTF16_LE + good + b"\x00\xd8" + "x\r\n".encode("utf-16-le"))  # a lone surrogate
    for read in (read_table, streamed):
        with pytest.raises(DataError) as exc:
            read(path)
        msg = check_error(exc, path, 4, None)
        assert "utf-16-le" in msg and "UTF-8" in msg
    path.write_bytes(codecs.BOM_UTF16_LE + good + b"x")  # cut short: an odd byte at the end
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "UTF-16" in check_error(exc, path, 4, None)


def test_utf16_without_bom_is_named(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("id\ttext\nr1\tx\n".encode("utf-16-le"))
    with pytest.raises(DataError) as exc:
        read_table(path)
    msg = check_error(exc, path, 1, None)
    assert "UTF-16" in msg and "encoding='utf-16-le'" in msg
    assert read_table(path, encoding="utf-16-le").columns == ["id", "text"]


# -- Excel's empty columns and rows ------------------------------------------------------------------------------


def test_trailing_empty_columns_are_dropped(tmp_path):
    body = "id,task,text,score,,,\r\nr1,q1,x,1,,,\r\n,,,,,,\r\nr2,q1,y,0,, ,\r\nr3,q1,z,1\r\n,,,,,,\r\n"
    path = write(tmp_path / "excel.csv", body)
    table = read_table(path)
    assert table.columns == ["id", "task", "text", "score"]
    assert table[0] == {"id": "r1", "task": "q1", "text": "x", "score": "1"}
    assert table.rows == [2, 4, 5]  # rows of only empty cells are skipped like blank lines, and counted
    assert streamed(path) == list(table)
    assert read_responses(path)["q1"].ids == ["r1", "r2", "r3"]


def test_unnamed_column_with_data_is_named_by_position(tmp_path):
    path = write(tmp_path / "excel.csv", "id,text,score,,\nr1,x,1,,\nr2,y,0,,note\n")
    for read in (read_table, streamed):
        with pytest.raises(DataError) as exc:
            read(path)
        msg = check_error(exc, path, 3, None)
        assert "column 5" in msg and "'note'" in msg and "line 1" in msg


def test_unnamed_columns_among_named_ones(tmp_path):
    path = write(tmp_path / "a.csv", "id,,text,,score\nr1,a,x,b,1\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "positions 2, 4" in check_error(exc, path, 1, None)
    # one unnamed column among named ones (a pandas index) reads as before, as column ''
    index = write(tmp_path / "b.csv", ",id,text\n0,r1,x\n")
    assert read_table(index)[0] == {"": "0", "id": "r1", "text": "x"}


def test_extra_fields_are_still_an_error(tmp_path):
    path = write(tmp_path / "a.csv", "id,text\nr1,hello,\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "3 fields" in check_error(exc, path, 2, None)


# -- invisible characters in header names --------------------------------------------------------------------------


def test_header_names_are_stripped_of_invisible_edges(tmp_path):
    path = write(tmp_path / "a.csv", "\ufeffid, text\u200b,score \u00a0,\u200btask\nr1,x,1,q1\n")
    table = read_table(path)
    assert table.columns == ["id", "text", "score", "task"]
    assert read_responses(path)["q1"].texts == ["x"]


def test_invisible_characters_inside_a_name_are_shown(tmp_path):
    path = write(tmp_path / "a.csv", "id,te\u200bxt,score\nr1,x,1\n")
    for read in (read_table, streamed):
        assert list(read(path)[0]) == ["id", "te\u200bxt", "score"]  # kept: only the edges are stripped
    with pytest.raises(DataError) as exc:
        read_responses(path, SINGLE)
    msg = check_error(exc, path, 1, "text")
    assert "'te\\u200bxt'" in msg and "invisible" in msg and "\u200b" not in msg
    upper = write(tmp_path / "b.csv", "id,Text,score\nr1,x,1\n")
    with pytest.raises(DataError) as exc:
        read_responses(upper, SINGLE)
    assert "column Text differs only in case" in check_error(exc, upper, 1, "text")


def test_names_equal_after_stripping_are_repeats(tmp_path):
    path = write(tmp_path / "a.csv", "id,score,score\u200b\nr1,1,2\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    msg = check_error(exc, path, 1, "score")
    assert "'score\\u200b'" in msg


# -- long cells ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["long.csv", "long.tsv"])
def test_long_cell_reads(tmp_path, name):
    text = ("word " * (200 * 1024 // 5 + 1))[: 200 * 1024]  # 200 KiB, over csv's default 128 KiB
    d = "\t" if name.endswith(".tsv") else ","
    path = write(tmp_path / name, f"id{d}text{d}score\nr1{d}{text}{d}1\nr2{d}short{d}0\n")
    assert [r["text"] for r in read_table(path)] == [text, "short"]
    assert [r["text"] for r in streamed(path)] == [text, "short"]
    assert readers.MAX_CELL_CHARS >= 16 * 1024 * 1024


@pytest.fixture
def small_limit(monkeypatch):
    """MAX_CELL_CHARS of 1000, and csv's process-wide limit restored afterwards."""
    monkeypatch.setattr(readers, "MAX_CELL_CHARS", 1000)
    before = csv.field_size_limit()
    yield 1000
    csv.field_size_limit(before)


def test_cell_over_the_limit_names_the_cause(tmp_path, small_limit):
    path = write(tmp_path / "a.csv", f"id,text\nr1,ok\nr2,{'x' * 5000}\nr3,ok\n")
    for read in (read_table, streamed):
        with pytest.raises(DataError) as exc:
            read(path)
        msg = check_error(exc, path, 3, None)
        assert "longer than 1,000 characters" in msg and "MAX_CELL_CHARS" in msg
        assert "quote" not in msg  # one line: nothing suggests a quote problem
    # an unclosed quote swallows the lines after it: the message says so
    lines = "".join(f"r{i},line {i} of a text\n" for i in range(3, 200))
    unclosed = write(tmp_path / "b.csv", f'id,text\nr1,ok\nr2,"opened and never closed\n{lines}')
    with pytest.raises(DataError) as exc:
        read_table(unclosed)
    msg = check_error(exc, unclosed, 3, None)
    assert "longer than 1,000" in msg and "never closed" in msg and "quoting='none'" in msg
