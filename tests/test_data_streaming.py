"""stream_behavior_log and synthetic streaming: per-user rows of texts, lazily, with the same rules."""

import json

import pandas as pd
import pytest

from ptum_hf.data import (
    BehaviorLogError,
    PretrainingCollator,
    load_behavior_dataset,
    read_behavior_log,
    stream_behavior_log,
    train_behavior_tokenizer,
)

GROUPED = (
    "user_id,timestamp,text\n"
    "a,30,Third\na,10,First\na,20,Second\na,20,Second\n"
    "b,5,Hello world\nb,,dropped\nb,6,First\n"
    "c,1,Only one\n"
)


def texts_by_user(rows):
    return {r["user_id"]: (r["behavior_texts"], r["timestamps"]) for r in rows}


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_stream_matches_in_memory(tmp_path, chunk_size):
    path = tmp_path / "log.csv"
    path.write_text(GROUPED)
    streamed = list(stream_behavior_log(path, chunk_size=chunk_size))
    data = read_behavior_log(path)
    expected = {u["user_id"]: ([data.behaviors[i] for i in u["behavior_ids"]], u["timestamps"]) for u in data.users}
    assert texts_by_user(streamed) == expected
    assert [r["user_id"] for r in streamed] == ["a", "b", "c"]


def test_ungrouped_input_is_refused_with_its_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,timestamp,text\na,1,x\nb,2,y\na,3,z\n")
    with pytest.raises(BehaviorLogError) as err:
        list(stream_behavior_log(path, chunk_size=2))
    assert err.value.line == 4 and err.value.column == "user_id" and "appears again" in str(err.value)


def test_per_user_rows_labels_and_shards(tmp_path):
    for part, users in enumerate((["a", "b"], ["c"])):
        with open(tmp_path / f"part{part}.jsonl", "w") as handle:
            for user in users:
                handle.write(
                    json.dumps({"user_id": user, "text": [f"{user} one", f"{user} two"], "timestamp": [2, 1]}) + "\n"
                )
    labels = pd.DataFrame({"user_id": ["a", "c"], "gender": ["M", "F"]})
    stream = stream_behavior_log(str(tmp_path / "part*.jsonl"), labels=labels)
    assert stream.num_shards == 2
    rows = list(stream)
    assert texts_by_user(rows)["a"] == (["a two", "a one"], [1, 2])
    assert [r["gender"] for r in rows] == [1, None, 0]  # classes sorted: F=0, M=1


def test_synthetic_streaming_equals_in_memory():
    data = load_behavior_dataset("synthetic", num_users=120, seed=5)
    rows = list(load_behavior_dataset("synthetic", num_users=120, seed=5, streaming=True))
    assert len(rows) == 120
    for row, user in zip(rows[::17], data.users.select(range(0, 120, 17))):
        assert row["behavior_texts"] == [data.behaviors[i] for i in user["behavior_ids"]]
        assert row["timestamps"] == user["timestamps"] and row["age"] == user["age"]


def test_collating_streamed_rows(tmp_path):
    rows = list(load_behavior_dataset("synthetic", num_users=40, seed=1, streaming=True))
    tokenizer = train_behavior_tokenizer((t for r in rows for t in r["behavior_texts"]), vocab_size=500)
    collator = PretrainingCollator(tokenizer=tokenizer, seed=0, text_buffer_size=1000)
    for start in range(0, 40, 16):
        batch = collator(rows[start : start + 16])
        assert (batch["mbp_labels"] >= 0).all() and batch["behavior_input_ids"].shape[1] <= 30
