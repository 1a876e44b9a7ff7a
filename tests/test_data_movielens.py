"""MovieLens 100K: the GroupLens and RecBole layouts (tiny files written here) and the real data if present."""

import os

import numpy as np
import pytest

from ptum_hf.data import BehaviorLogError, load_behavior_dataset
from ptum_hf.data.movielens import GENRES  # the file layout's genre columns

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ml-100k")

ITEMS = [
    ("1", "Toy Story (1995)", "01-Jan-1995", {"Animation", "Children's", "Comedy"}),
    ("2", "Misérables, Les (1995)", "01-Jan-1995", {"Drama", "Musical"}),
    ("3", "unknown", "", {"unknown"}),
    ("4", "Shawshank Redemption, The (1994)", "01-Jan-1994", {"Drama"}),
]
USERS = [("1", "19", "M", "student"), ("2", "20", "F", "writer"), ("3", "60", "M", "retired")]


def ratings():
    """User 1: 12 ratings (one per item cycle), user 2: 6, user 3: 2, times out of order in the file."""
    rows = []
    for t in range(12):
        rows.append(("1", ITEMS[t % 4][0], str(1 + t % 5), str(1000 - t)))
    for t in range(6):
        rows.append(("2", ITEMS[t % 4][0], "5", str(2000 + t)))
    rows += [("3", "1", "4", "10"), ("3", "2", "3", "11")]
    return rows


def write_grouplens(directory):
    directory.mkdir(exist_ok=True)
    (directory / "u.data").write_text("".join("\t".join(r) + "\n" for r in ratings()))
    lines = []
    for item_id, title, date, genres in ITEMS:
        flags = ["1" if g in genres else "0" for g in GENRES]
        lines.append("|".join([item_id, title, date, "", "http://x"] + flags))
    (directory / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (directory / "u.user").write_text("".join("|".join(u + ("12345",)) + "\n" for u in USERS))
    return directory


def write_recbole(directory):
    directory.mkdir(exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (directory / "ml-100k.inter").write_text(inter + "".join("\t".join(r) + "\n" for r in ratings()))
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for item_id, title, date, genres in ITEMS:
        name = title[:-7] if title.endswith(")") else title
        year = date[-4:] if date else "unkonwn"
        item += f"{item_id}\t{name}\t{year}\t{' '.join(g for g in GENRES if g in genres)}\n"
    (directory / "ml-100k.item").write_text(item)
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    (directory / "ml-100k.user").write_text(user + "".join("\t".join(u + ("12345",)) + "\n" for u in USERS))
    return directory


@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_tiny_layouts(tmp_path, layout):
    path = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / layout)
    data = load_behavior_dataset("movielens-100k", path=path)
    assert data.users["user_id"] == ["1", "2", "3"]
    first = data.users[0]
    assert first["timestamps"] == sorted(first["timestamps"]) and len(first["behavior_ids"]) == 12
    assert data.behaviors[first["behavior_ids"][0]] == "Shawshank Redemption, The (1994) | Drama"  # t = 989
    assert "Toy Story (1995) | Animation, Children's, Comedy" in data.behaviors
    assert "Misérables, Les (1995) | Drama, Musical" in data.behaviors
    # ages 19 | 20 | 60 fall on the bucket boundaries; M = 0, F = 1
    assert data.users["age"] == [0, 1, 3] and data.users["gender"] == [0, 1, 0]
    assert data.label_classes["age"] == ["<20", "20-39", "40-59", "60+"]
    assert data.label_classes["occupation"] == ["retired", "student", "writer"]
    report = data.report
    assert report.impressions_read == 20 and report.dropped_impressions == {"short_history": 5 + 5 + 2}
    # user 1: 7 impressions -> 1 test, 1 validation, 5 train; user 2: 1 impression -> test
    assert (data.ctr["train"].num_rows, data.ctr["validation"].num_rows, data.ctr["test"].num_rows) == (5, 1, 2)
    test = data.ctr["test"].to_list()
    assert sorted(r["user_index"] for r in test) == [0, 1]
    user1 = [r for r in test if r["user_index"] == 0][0]
    ids = data.users[0]["behavior_ids"]
    assert user1["history_end"] == 11 and user1["ad_title_id"] == ids[11] and user1["ad_description_id"] == -1
    assert user1["label"] == 0  # its latest rating (time 1000, first in the file) is a 1
    report.check()


def test_malformed_grouplens(tmp_path):
    path = write_grouplens(tmp_path / "ml")
    (path / "u.user").write_text("1|19|M|student|1\n2|20|F\n")
    with pytest.raises(BehaviorLogError) as err:
        load_behavior_dataset("movielens-100k", path=path)
    assert err.value.path.endswith("u.user") and err.value.line == 2 and "expected 5 fields" in str(err.value)
    (path / "u.user").write_text("1|19|M|student|1\n2|20|X|writer|1\n3|60|M|retired|1\n")
    with pytest.raises(BehaviorLogError, match=r"u\.user, line 2, column 'gender': label 'X'"):
        load_behavior_dataset("movielens-100k", path=path)
    (path / "u.user").write_text("1|19|M|student|1\n2|young|F|writer|1\n3|60|M|retired|1\n")
    with pytest.raises(BehaviorLogError, match=r"line 2, column 'age'"):
        load_behavior_dataset("movielens-100k", path=path)
    with pytest.raises(FileNotFoundError, match="no MovieLens directory"):
        load_behavior_dataset("movielens-100k", path=tmp_path / "nowhere")


@pytest.mark.skipif(not os.path.isdir(REAL), reason=f"MovieLens 100K not found at {REAL} (../shared/data)")
def test_real_movielens():
    data = load_behavior_dataset("movielens-100k", path=REAL)
    assert data.users.num_rows == 943 and len(data.behaviors) > 1600
    assert np.bincount(data.users["age"]).tolist() == [77, 573, 262, 31]
    assert np.bincount(data.users["gender"]).tolist() == [670, 273]
    assert len(data.label_classes["occupation"]) == 21
    report = data.report
    assert report.events_read == 100_000
    assert report.events_kept + report.dropped_events.get("duplicate_event", 0) == 100_000
    assert data.sequences().lengths.min() >= 19
    sizes = {name: split.num_rows for name, split in data.ctr.items()}
    assert sum(sizes.values()) == report.impressions_kept and sizes["test"] == sizes["validation"]
    assert 0.5 < np.mean(data.ctr["train"]["label"]) < 0.6
