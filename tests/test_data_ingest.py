"""read_behavior_log: formats, paths, column_map, labels, the vocabulary and the report."""

import gzip
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptum_hf.data import BehaviorLogError, read_behavior_log

EVENTS = pd.DataFrame(
    {
        "user_id": ["a", "a", "b", "a", "b", "c"],
        "timestamp": [30, 10, 5, 20, 6, 1],
        "text": ["Third", "First", "Hello world", "Second", "First", "Only one"],
    }
)


def write(frame: pd.DataFrame, path, fmt: str):
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def as_texts(data):
    return {u["user_id"]: ([data.behaviors[i] for i in u["behavior_ids"]], u["timestamps"]) for u in data.users}


EXPECTED = {
    "a": (["First", "Second", "Third"], [10, 20, 30]),
    "b": (["Hello world", "First"], [5, 6]),
    "c": (["Only one"], [1]),
}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_give_the_same_dataset(tmp_path, fmt):
    data = read_behavior_log(write(EVENTS, tmp_path / f"log.{fmt}", fmt))
    assert as_texts(data) == EXPECTED
    assert data.users["user_id"] == ["a", "b", "c"]  # order of first appearance
    assert sorted(data.behaviors) == sorted(set(EVENTS["text"]))  # a repeated behavior is stored once
    report = data.report
    assert report.events_read == 6 and report.events_kept == 6 and report.users_kept == 3
    assert report.users_reordered == 1  # user a was out of order
    assert data.users.features["behavior_ids"].feature.dtype == "int32"
    assert data.users.features["timestamps"].feature.dtype == "int64"


def test_gzip_glob_directory_and_list(tmp_path):
    first, second = EVENTS.iloc[:3], EVENTS.iloc[3:]
    write(first, tmp_path / "part1.csv", "csv")
    with gzip.open(tmp_path / "part2.csv.gz", "wt") as handle:
        second.to_csv(handle, index=False)
    for paths in (str(tmp_path / "part*"), tmp_path, [tmp_path / "part1.csv", tmp_path / "part2.csv.gz"]):
        data = read_behavior_log(paths)
        assert as_texts(data) == EXPECTED and len(data.report.files) == 2
    with pytest.raises(FileNotFoundError, match="nomatch"):
        read_behavior_log(str(tmp_path / "nomatch*.csv"))


def test_column_map_and_suggestion(tmp_path):
    renamed = EVENTS.rename(columns={"user_id": "uid", "timestamp": "time", "text": "title"})
    path = write(renamed.assign(extra=1), tmp_path / "log.csv", "csv")
    data = read_behavior_log(path, column_map={"uid": "user_id", "time": "timestamp", "title": "text"})
    assert as_texts(data) == EXPECTED
    with pytest.raises(BehaviorLogError, match=r"log\.csv.*missing column\(s\) 'user_id'.*'uid'"):
        read_behavior_log(path, column_map={"time": "timestamp", "title": "text"})
    with pytest.raises(ValueError, match="flip the pairs"):
        read_behavior_log(path, column_map={"user_id": "uid"})


def test_per_user_list_rows(tmp_path):
    rows = [{"user_id": user, "text": texts, "timestamp": times} for user, (texts, times) in EXPECTED.items()]
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_behavior_log(path)
    assert as_texts(data) == EXPECTED and (data.report.rows_read, data.report.events_read) == (3, 6)
    pd.DataFrame(rows).to_parquet(tmp_path / "users.parquet")
    assert as_texts(read_behavior_log(tmp_path / "users.parquet")) == EXPECTED


def test_timestamps_ints_floats_iso(tmp_path):
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2],
            "timestamp": ["1577836800", "2020-01-01T00:00:10Z", "1577836805.9", "2020-01-01 01:00:00+01:00"],
            "text": ["x", "y", "z", "w"],
        }
    )
    data = read_behavior_log(write(frame, tmp_path / "log.csv", "csv"))
    assert data.users[0]["timestamps"] == [1577836800, 1577836805, 1577836810]
    assert data.users[1]["timestamps"] == [1577836800]
    assert data.users["user_id"] == ["1", "2"]  # ids are strings
    ms = pd.DataFrame({"user_id": ["u"], "timestamp": [1_577_836_800_123], "text": ["x"]})
    assert read_behavior_log(write(ms, tmp_path / "ms.parquet", "parquet"), timestamp_unit="ms").users[0][
        "timestamps"
    ] == [1577836800]


def test_labels_table(tmp_path):
    log = write(EVENTS, tmp_path / "log.csv", "csv")
    labels = pd.DataFrame({"user_id": ["a", "b", "z"], "age": [2, None, 1], "gender": ["F", "M", "M"]})
    data = read_behavior_log(log, labels=labels)
    assert data.label_classes == {"age": [1, 2], "gender": ["F", "M"]}
    assert data.label_heads == {"age": 2, "gender": 2}
    assert data.users["age"] == [1, None, None] and data.users["gender"] == [0, 1, None]
    assert data.report.missing_labels == {"age": 2, "gender": 1}
    assert data.report.users_read == 4 and data.report.dropped_users == {"no_events": 1}  # z has no events
    labels_path = write(labels, tmp_path / "labels.csv", "csv")
    given = read_behavior_log(log, labels=labels_path, label_classes={"gender": ["M", "F"]}, label_columns=["gender"])
    assert given.users["gender"] == [1, 0, None] and list(given.label_classes) == ["gender"]


def test_report_invariant_and_summary(tmp_path):
    frame = pd.concat(
        [EVENTS, pd.DataFrame({"user_id": ["a", "", "d"], "timestamp": [10, 1, None], "text": ["First", "x", "y"]})]
    )
    data = read_behavior_log(write(frame, tmp_path / "log.csv", "csv"))
    r = data.report
    assert r.events_read == 9 == r.events_kept + sum(r.dropped_events.values())
    assert r.dropped_events == {"missing_user_id": 1, "missing_timestamp": 1, "duplicate_event": 1}
    assert r.users_read == r.users_kept + sum(r.dropped_users.values()) and r.dropped_users == {"no_events": 1}
    assert "9 read" in r.summary()
    r.check()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", ""]),
            st.one_of(st.none(), st.integers(-3, 6)),
            st.sampled_from(["a", "b", " a ", "", "c d"]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_rules_hold_on_random_logs(rows):
    """Whatever the log: counts add up, times are sorted, every kept event was in the input once."""
    import tempfile

    frame = pd.DataFrame(rows, columns=["user_id", "timestamp", "text"]).astype({"timestamp": "Int64"})
    with tempfile.TemporaryDirectory() as directory:
        path = write(frame, f"{directory}/log.csv", "csv")
        try:
            data = read_behavior_log(path)
        except BehaviorLogError as err:
            assert "no event was kept" in str(err)
            return
    data.report.check()
    valid = {(u, t, " ".join(x.split())) for u, t, x in rows if u and t is not None and t >= 0 and x.strip()}
    kept = set()
    for user in data.users:
        assert user["timestamps"] == sorted(user["timestamps"])
        events = [(user["user_id"], t, data.behaviors[i]) for t, i in zip(user["timestamps"], user["behavior_ids"])]
        assert len(events) == len(set(events))
        kept |= set(events)
    assert kept == valid and data.report.events_kept == len(valid)
