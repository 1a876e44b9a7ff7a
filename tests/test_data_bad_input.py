"""Every kind of bad input is either refused with a BehaviorLogError naming file/line/column, or handled by the
documented rule and counted in the report."""

import pandas as pd
import pytest

from ptum_hf.data import BehaviorLogError, read_behavior_log


def csv_file(tmp_path, text: str, name: str = "log.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


HEADER = "user_id,timestamp,text\n"


def test_empty_file(tmp_path):
    for content in ("", "  \n\n"):
        with pytest.raises(BehaviorLogError, match=r"log\.csv: the file is empty"):
            read_behavior_log(csv_file(tmp_path, content))
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(BehaviorLogError, match="empty"):
        read_behavior_log(tmp_path / "log.jsonl")


def test_header_only_file_keeps_nothing(tmp_path):
    with pytest.raises(BehaviorLogError, match="no event was kept"):
        read_behavior_log(csv_file(tmp_path, HEADER))


def test_missing_or_misnamed_column(tmp_path):
    path = csv_file(tmp_path, "user,timestamp,txt\n1,2,x\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(path)
    message = str(err.value)
    assert "log.csv" in message and "'user_id'" in message and "'text'" in message
    assert "column_map={'txt': 'text'}" in message
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": 1, "timestamp": 2, "title": "x"}\n')
    with pytest.raises(BehaviorLogError, match=r"log\.jsonl.*missing column\(s\) 'text'"):
        read_behavior_log(jsonl)
    with pytest.raises(BehaviorLogError, match="both become 'text'"):
        read_behavior_log(csv_file(tmp_path, "user_id,timestamp,text,title\n1,2,x,y\n"), column_map={"title": "text"})


def test_non_utf8_bytes(tmp_path):
    path = csv_file(tmp_path, HEADER.encode() + b"1,5,ok\n2,6,caf\xe9 au lait\n")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(path)
    assert err.value.path == str(path) and err.value.line == 3 and err.value.column == "text"
    assert "encoding='latin-1'" in str(err.value)
    data = read_behavior_log(path, encoding="latin-1")
    assert "café au lait" in data.behaviors
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_bytes(b'{"user_id": 1, "timestamp": 1, "text": "a"}\n{"user_id": 1, "timestamp": 2, "text": "\xff"}\n')
    with pytest.raises(BehaviorLogError, match=r"log\.jsonl, line 2"):
        read_behavior_log(jsonl)


def test_missing_nan_timestamps_are_dropped_and_counted(tmp_path):
    data = read_behavior_log(csv_file(tmp_path, HEADER + "1,,a\n1,nan,b\n1,NaN,c\n1,5,d\n"))
    assert data.report.dropped_events == {"missing_timestamp": 3} and data.report.events_kept == 1
    frame = pd.DataFrame({"user_id": ["1", "1"], "timestamp": [float("nan"), 3.0], "text": ["a", "b"]})
    frame.to_parquet(tmp_path / "log.parquet")
    assert read_behavior_log(tmp_path / "log.parquet").report.dropped_events == {"missing_timestamp": 1}


def test_negative_timestamps_are_dropped_and_counted(tmp_path):
    data = read_behavior_log(csv_file(tmp_path, HEADER + "1,-5,a\n1,5,b\n"))
    assert data.report.dropped_events == {"negative_timestamp": 1}


def test_unparseable_timestamp_names_line_and_column(tmp_path):
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(csv_file(tmp_path, HEADER + '1,5,a\n1,"6",b\n2,yesterday,c\n'))
    assert (err.value.line, err.value.column) == (4, "timestamp") and "yesterday" in str(err.value)
    # quoted newlines are counted: the record after a two-line text is on line 5
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(csv_file(tmp_path, HEADER + '1,5,"two\nlines"\n2,soon,c\n'))
    assert err.value.line == 4
    with pytest.raises(BehaviorLogError, match="timestamp_format"):
        read_behavior_log(csv_file(tmp_path, HEADER + "1,11/11/2019 9:05:47 AM,a\n"))
    data = read_behavior_log(
        csv_file(tmp_path, HEADER + "1,11/11/2019 9:05:47 AM,a\n"), timestamp_format="%m/%d/%Y %I:%M:%S %p"
    )
    assert data.users[0]["timestamps"] == [1573463147]


def test_unsorted_and_tied_timestamps_are_sorted_and_kept(tmp_path):
    data = read_behavior_log(csv_file(tmp_path, HEADER + "1,9,c\n1,3,a\n1,3,b\n2,1,x\n"))
    user = data.users[0]
    assert [data.behaviors[i] for i in user["behavior_ids"]] == ["a", "b", "c"] and user["timestamps"] == [3, 3, 9]
    assert data.report.users_reordered == 1 and data.report.tied_timestamps == 1 and not data.report.dropped_events


def test_duplicate_events_are_dropped_and_counted(tmp_path):
    data = read_behavior_log(csv_file(tmp_path, HEADER + "1,3,a\n1,3,a\n1,3,  a \n1,4,a\n"))
    assert data.users[0]["timestamps"] == [3, 4] and data.report.dropped_events == {"duplicate_event": 2}


def test_users_with_zero_or_one_behavior(tmp_path):
    log = csv_file(tmp_path, HEADER + "1,3,a\n1,4,b\n2,5,c\n3,6,\n")
    labels = pd.DataFrame({"user_id": ["1", "2", "4"], "age": [0, 1, 1]})
    data = read_behavior_log(log, labels=labels)
    assert data.users["user_id"] == ["1", "2"]  # user 2 with one behavior is kept by default
    assert data.report.dropped_users == {"no_events": 2}  # 3 (its only event has no text) and 4 (labels only)
    strict = read_behavior_log(log, labels=labels, min_behaviors=2)
    assert strict.users["user_id"] == ["1"]
    assert strict.report.dropped_users == {"no_events": 2, "too_few_behaviors": 1}
    assert strict.report.dropped_events == {"missing_text": 1, "user_too_short": 1}
    strict.report.check()


def test_labels_outside_the_label_set(tmp_path):
    log = csv_file(tmp_path, HEADER + "1,3,a\n2,4,b\n")
    labels = csv_file(tmp_path, "user_id,gender\n1,M\n2,X\n", name="labels.csv")
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(log, labels=labels, label_classes={"gender": ["M", "F"]})
    assert err.value.path == str(labels) and err.value.line == 3 and err.value.column == "gender"
    assert "'X'" in str(err.value)
    data = read_behavior_log(log, labels=labels, label_classes={"gender": ["M", "F"]}, invalid_labels="missing")
    assert data.users["gender"] == [0, None] and data.report.invalid_labels == {"gender": 1}
    with pytest.raises(BehaviorLogError, match="second labels row"):
        read_behavior_log(log, labels=pd.DataFrame({"user_id": ["1", "1"], "gender": ["M", "F"]}))


def test_very_long_text_is_truncated_and_counted(tmp_path):
    long = "word " * 20_000  # 100,000 characters
    data = read_behavior_log(csv_file(tmp_path, HEADER + f"1,3,{long}\n1,4,short\n"))
    assert max(len(t) for t in data.behaviors) <= 1000 and data.report.texts_truncated == 1
    roomy = read_behavior_log(csv_file(tmp_path, HEADER + f"1,3,{long}\n"), max_text_chars=200_000)
    assert roomy.report.texts_truncated == 0


def test_whitespace_is_normalised(tmp_path):
    data = read_behavior_log(csv_file(tmp_path, HEADER + '1,3,"  Hello \t\n  world "\n1,4,   \n'))
    assert data.behaviors == ["Hello world"] and data.report.dropped_events == {"missing_text": 1}


def test_malformed_files(tmp_path):
    with pytest.raises(BehaviorLogError, match=r"log\.csv.*malformed CSV"):
        read_behavior_log(csv_file(tmp_path, HEADER + "1,3,a\n1,4,b,extra\n"))
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": 1, "timestamp": 1, "text": "a"}\n\n{"user_id": 1, oops}\n')
    with pytest.raises(BehaviorLogError, match=r"log\.jsonl, line 3: invalid JSON"):
        read_behavior_log(jsonl)
    jsonl.write_text("[1, 2]\n")
    with pytest.raises(BehaviorLogError, match="line 1: expected a JSON object"):
        read_behavior_log(jsonl)
    jsonl.write_text('{"user_id": 1, "timestamp": [1, 2], "text": ["a"]}\n')
    with pytest.raises(BehaviorLogError, match="line 1, column 'timestamp': per-user rows"):
        read_behavior_log(jsonl)
    (tmp_path / "log.parquet").write_bytes(b"not parquet")
    with pytest.raises(BehaviorLogError, match="cannot read Parquet"):
        read_behavior_log(tmp_path / "log.parquet")
    with pytest.raises(BehaviorLogError, match="cannot tell the format"):
        read_behavior_log(csv_file(tmp_path, "x", name="log.xlsx"))


def test_errors_are_value_errors_and_picklable(tmp_path):
    import pickle

    error = BehaviorLogError("bad", path="f.csv", line=3, column="text")
    assert isinstance(error, ValueError) and str(error) == "f.csv, line 3, column 'text': bad"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    # pandas skips blank lines; the line finder used to count them as records and name the line before
    with pytest.raises(BehaviorLogError) as err:
        read_behavior_log(csv_file(tmp_path, HEADER + "1,5,a\n\n2,soon,c\n"))
    assert (err.value.line, err.value.column) == (4, "timestamp")
