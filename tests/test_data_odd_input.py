"""Odd input that used to be accepted without a word (issue 18, item 5): each case is now refused with a
BehaviorLogError naming file, line and column, or accepted and counted in the report (events read = kept + dropped).

1. fields longer than Python's csv limit (128 KiB) and than the documented maximum (16 MiB), a file without header;
2. NUL bytes in user ids and texts;
3. user ids that are neither strings nor integers (JSON `1.0`, `true`, lists; Parquet float/bool columns);
4. times outside [1970-01-01, 2100-01-01) (year 33658: milliseconds read as seconds; 9999-12-31 placeholders);
5. a UTF-8 byte order mark at the start of the file.
"""

import gzip
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum_hf.data import BehaviorLogError, read_behavior_log, stream_behavior_log
from ptum_hf.data.readers import MAX_FIELD_CHARS

HEADER = "user_id,timestamp,text\n"
BOM = b"\xef\xbb\xbf"


def write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def jsonl(tmp_path, records, name="log.jsonl") -> str:
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def checked(data):
    """The report's invariant, spelled out."""
    report = data.report
    report.check()
    assert report.events_read == report.events_kept + sum(report.dropped_events.values())
    assert report.users_read == report.users_kept + sum(report.dropped_users.values())
    return data


def streamed(path, **kwargs):
    return {row["user_id"]: (row["behavior_texts"], row["timestamps"]) for row in stream_behavior_log(path, **kwargs)}


# 1. Long fields and a missing header


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv")])
def test_a_field_over_the_limit_in_a_headerless_file_is_refused_with_file_and_line(tmp_path, sep, suffix):
    huge = "x" * (MAX_FIELD_CHARS + 1)
    path = write(tmp_path, f"log.{suffix}", sep.join(["1", "5", huge]) + "\n" + sep.join(["1", "6", "b"]) + "\n")
    for read in (read_behavior_log, lambda p: list(stream_behavior_log(p))):
        with pytest.raises(BehaviorLogError) as err:  # was a bare _csv.Error: field larger than field limit (131072)
            read(path)
        assert err.value.path == path and err.value.line == 1 and "header" in str(err.value)


def test_a_headerless_file_with_a_long_first_text_is_refused_as_missing_its_header(tmp_path):
    long = "word " * 60_000  # 300,000 characters: over Python's csv limit, under the documented maximum
    path = write(tmp_path, "log.csv", f"1,5,{long}\n1,6,b\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(path)
    message = str(err.value)
    assert err.value.path == path and "missing column(s)" in message and "needs a header line" in message
    assert "300,000 characters" in message and len(message) < 1000  # the long "name" is shown cut


def test_fields_over_the_python_csv_limit_are_read_and_errors_after_them_keep_their_line(tmp_path):
    long = "y" * 200_000  # over Python's default csv field limit (131072)
    path = write(tmp_path, "log.csv", HEADER + f"1,5,{long}\n1,6,b\n2,soon,c\n")
    with pytest.raises(BehaviorLogError) as err:  # was a bare _csv.Error while finding the line
        read_behavior_log(path)
    assert (err.value.line, err.value.column) == (4, "timestamp") and "soon" in str(err.value)
    path = write(tmp_path, "ok.csv", HEADER + f"1,5,{long}\n1,6,b\n")
    data = checked(read_behavior_log(path))
    assert data.report.texts_truncated == 1 and data.report.events_kept == 2
    assert streamed(path)["1"][1] == [5, 6]


@pytest.mark.parametrize("name", ["log.csv", "log.tsv.gz"])
def test_a_data_field_over_the_limit_is_refused_with_file_line_and_column(tmp_path, name):
    sep = "\t" if ".tsv" in name else ","
    huge = "z" * (MAX_FIELD_CHARS + 1)
    rows = [["user_id", "timestamp", "text"], ["1", "5", "a"], ["1", "6", huge], ["1", "7", "c"]]
    content = "".join(sep.join(row) + "\n" for row in rows).encode()
    path = write(tmp_path, name, gzip.compress(content) if name.endswith(".gz") else content)
    for read in (read_behavior_log, lambda p: list(stream_behavior_log(p))):
        with pytest.raises(BehaviorLogError) as err:  # was read whole and cut to max_text_chars without a word
            read(path)
        assert (err.value.path, err.value.line, err.value.column) == (path, 3, "text")
        assert "16 MiB" in str(err.value)


# 2. NUL bytes


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_nul_bytes_in_ids_and_texts_drop_the_event_and_are_counted(tmp_path, fmt):
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u\x001", "u2", "u2", "u3"],
            "timestamp": [1, 2, 3, 4, 5],
            "text": ["a", "b", "c\x00d", "e", "f"],
        }
    )
    path = tmp_path / f"log.{fmt}"
    if fmt in ("csv", "tsv"):
        frame.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    data = checked(read_behavior_log(path))
    assert data.users["user_id"] == ["u1", "u2", "u3"] and data.report.dropped_events == {"nul_byte": 2}
    assert all("\x00" not in text for text in data.behaviors) and data.behaviors == ["a", "e", "f"]
    line = {"csv": "line 3", "tsv": "line 3", "jsonl": "line 2", "parquet": "row 2"}[fmt]
    assert f"{path.name}, {line}" in data.report.summary() and "NUL" in data.report.summary()
    assert streamed(path) == {"u1": (["a"], [1]), "u2": (["e"], [4]), "u3": (["f"], [5])}


def test_nul_bytes_in_a_labels_table_are_refused(tmp_path):
    log = write(tmp_path, "log.csv", HEADER + "1,3,a\n2,4,b\n")
    labels = write(tmp_path, "labels.csv", "user_id,gender\n1,M\n2\x00,F\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(log, labels=labels)
    assert (err.value.path, err.value.line, err.value.column) == (labels, 3, "user_id") and "NUL" in str(err.value)
    labels = write(tmp_path, "labels2.csv", "user_id,gender\n1,M\n2,F\x00\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(log, labels=labels)
    assert (err.value.line, err.value.column) == (3, "gender") and "NUL" in str(err.value)


# 3. User ids of other types than string and integer


def test_json_ids_that_are_not_strings_or_integers_are_dropped_and_counted(tmp_path):
    ids = [1, "1", " 1 ", 1.0, True, 2.5, [1], {"a": 1}, None, 2]
    path = jsonl(tmp_path, [{"user_id": u, "timestamp": i, "text": f"t{i}"} for i, u in enumerate(ids)])
    data = checked(read_behavior_log(path))
    # integer 1 and string "1" are one user (documented); 1.0, true, 2.5, [1] and {"a": 1} are not ids
    assert data.users["user_id"] == ["1", "2"] and data.users[0]["timestamps"] == [0, 1, 2]
    assert data.report.dropped_events == {"invalid_user_id": 5, "missing_user_id": 1}
    assert data.report.users_read == 2 and "True" not in data.users["user_id"]
    assert "log.jsonl, line 4" in data.report.summary() and "1.0 of type float" in data.report.summary()
    assert streamed(path) == {"1": (["t0", "t1", "t2"], [0, 1, 2]), "2": (["t9"], [9])}


def test_json_true_and_1_0_do_not_merge_into_user_1(tmp_path):
    # pandas' factorize counts 1, 1.0 and True as one value: all three used to become user "1"
    path = jsonl(tmp_path, [{"user_id": u, "timestamp": i, "text": f"t{i}"} for i, u in enumerate([1, True, 1.0])])
    data = checked(read_behavior_log(path))
    assert data.users["user_id"] == ["1"] and data.users[0]["timestamps"] == [0]
    assert data.report.dropped_events == {"invalid_user_id": 2}
    only_bad = jsonl(tmp_path, [{"user_id": True, "timestamp": 1, "text": "a"}], name="bad.jsonl")
    with pytest.raises(BehaviorLogError, match=r"(?s)no event was kept.*invalid_user_id"):
        read_behavior_log(only_bad)


@pytest.mark.parametrize(
    "ids,kind", [([1.0, 2.0, None], "double"), ([True, False, True], "bool"), ([1.5, 2.5, 3.5], "float")]
)
def test_parquet_float_or_bool_id_columns_are_refused(tmp_path, ids, kind):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ids, "timestamp": [1, 2, 3], "text": ["a", "b", "c"]}), path)
    for read in (read_behavior_log, lambda p: list(stream_behavior_log(p))):
        with pytest.raises(BehaviorLogError, match="user ids must be strings or integers") as err:
            read(path)
        assert err.value.path == str(path) and err.value.column == "user_id" and kind in str(err.value)
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"uid": ids, "timestamp": [1, 2, 3], "text": ["a", "b", "c"]}), renamed)
    with pytest.raises(BehaviorLogError, match="user ids must be strings or integers"):
        read_behavior_log(renamed, column_map={"uid": "user_id"})


def test_parquet_integer_and_string_id_columns_are_read(tmp_path):
    for ids, expected in (([1, None, 2], ["1", "2"]), (["a", "b", None], ["a", "b"])):
        path = tmp_path / "log.parquet"
        pq.write_table(pa.table({"user_id": ids, "timestamp": [1, 2, 3], "text": ["a", "b", "c"]}), path)
        data = checked(read_behavior_log(path))
        assert data.users["user_id"] == expected and data.report.dropped_events == {"missing_user_id": 1}


def test_a_labels_table_with_float_ids_is_refused(tmp_path):
    log = write(tmp_path, "log.csv", HEADER + "1,3,a\n2,4,b\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(log, labels=pd.DataFrame({"user_id": [1.0, 2.0], "age": [0, 1]}))
    assert (err.value.line, err.value.column) == (1, "user_id") and "not a string or an integer" in str(err.value)
    data = read_behavior_log(log, labels=pd.DataFrame({"user_id": [1, 2], "age": [0, 1]}))
    assert data.users["age"] == [0, 1]  # integer ids match the CSV's "1" and "2"


# 4. Times out of range


def test_times_after_2100_are_dropped_and_counted(tmp_path):
    rows = [
        "1,1000000000000,a",  # milliseconds read as seconds: year 33658
        "1,253402214400,b",  # 9999-12-31 as seconds
        "1,9999-12-31,c",  # the usual "no date" placeholder
        "1,1e20,d",  # used to be refused as out of range for int64: now out of range like the others
        "1,4102444800,e",  # 2100-01-01T00:00:00Z: the first second out of range
        "1,4102444799,f",  # the last second in range
        "1,5,g",
    ]
    path = write(tmp_path, "log.csv", HEADER + "\n".join(rows) + "\n")
    data = checked(read_behavior_log(path))
    assert data.users[0]["timestamps"] == [5, 4102444799] and data.report.dropped_events == {"timestamp_after_2100": 5}
    summary = data.report.summary()
    assert "log.csv, line 2" in summary and "timestamp_unit='ms'" in summary and "2001-09-09" in summary
    assert streamed(path) == {"1": (["g", "f"], [5, 4102444799])}


def test_a_wrong_unit_is_refused_with_a_hint_and_the_right_unit_reads(tmp_path):
    path = write(tmp_path, "log.csv", HEADER + "1,1700000000000,a\n1,1700000001000,b\n")
    with pytest.raises(BehaviorLogError, match=r"(?s)no event was kept.*timestamp_after_2100.*timestamp_unit='ms'"):
        read_behavior_log(path)
    assert checked(read_behavior_log(path, timestamp_unit="ms")).users[0]["timestamps"] == [1700000000, 1700000001]


def test_times_out_of_range_in_parquet_and_json(tmp_path):
    path = tmp_path / "log.parquet"
    times = pa.array([253402214400000, 5000, 4102444800000], pa.timestamp("ms"))  # 9999-12-31, 5 s, 2100-01-01
    pq.write_table(pa.table({"user_id": ["1", "1", "1"], "timestamp": times, "text": ["a", "b", "c"]}), path)
    data = checked(read_behavior_log(path))
    assert data.users[0]["timestamps"] == [5] and data.report.dropped_events == {"timestamp_after_2100": 2}
    records = [{"user_id": 1, "timestamp": t, "text": x} for t, x in ((2**70, "a"), (1e300, "b"), (7, "c"))]
    data = checked(read_behavior_log(jsonl(tmp_path, records)))
    assert data.users[0]["timestamps"] == [7] and data.report.dropped_events == {"timestamp_after_2100": 2}
    unsigned = tmp_path / "unsigned.parquet"  # above int64: used to wrap around to a negative time
    table = pa.table({"user_id": ["1", "1"], "timestamp": pa.array([2**64 - 1, 3], pa.uint64()), "text": ["a", "b"]})
    pq.write_table(table, unsigned)
    assert checked(read_behavior_log(unsigned)).report.dropped_events == {"timestamp_after_2100": 1}


# 5. A UTF-8 byte order mark


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv"), (",", "csv.gz")])
def test_a_byte_order_mark_is_skipped_and_not_counted(tmp_path, sep, suffix):
    content = BOM + (sep.join(["user_id", "timestamp", "text"]) + "\n" + sep.join(["1", "5", "a"]) + "\n").encode()
    path = write(tmp_path, f"log.{suffix}", gzip.compress(content) if suffix.endswith(".gz") else content)
    data = checked(read_behavior_log(path))
    assert data.users["user_id"] == ["1"] and data.behaviors == ["a"]
    assert data.report.dropped_events == {} and data.report.events_read == 1 and not data.report.notes
    assert streamed(path) == {"1": (["a"], [5])}
    renamed = BOM + (sep.join(["uid", "timestamp", "text"]) + "\n" + sep.join(["1", "5", "a"]) + "\n").encode()
    path = write(tmp_path, f"renamed.{suffix.split('.')[0]}", renamed)
    assert read_behavior_log(path, column_map={"uid": "user_id"}).users["user_id"] == ["1"]


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv")])
def test_a_byte_order_mark_before_a_missing_header_is_not_shown_as_a_column(tmp_path, sep, suffix):
    path = write(tmp_path, f"log.{suffix}", BOM + (sep.join(["1", "5", "a"]) + "\n").encode())
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(path)
    message = str(err.value)
    assert "\ufeff" not in message and "'1', '5', 'a'" in message and "needs a header line" in message


def test_a_byte_order_mark_in_json_lines_and_labels(tmp_path):
    path = write(tmp_path, "log.jsonl", BOM + b'{"user_id": 1, "timestamp": 2, "text": "a"}\n')
    data = checked(read_behavior_log(path))  # was refused: invalid JSON: Unexpected UTF-8 BOM
    assert data.users["user_id"] == ["1"] and data.report.dropped_events == {}
    labels = write(tmp_path, "labels.csv", BOM + b"user_id,age\n1,3\n")
    assert read_behavior_log(path, labels=labels).users["age"] == [0]
