"""MIND layout: histories as behaviors (timestamped before the first impression), impressions as CTR examples."""

import pytest

from ptum_hf.data import BehaviorLogError, load_behavior_dataset

NEWS = [
    ("N1", "news", "world", "First title here", "Abstract one"),
    ("N2", "sports", "soccer", 'Second "quoted" title', ""),
    ("N3", "news", "us", "Third title", "Abstract three"),
    ("N4", "food", "x", "Fourth title", "Abs four"),
    ("N5", "food", "x", "", "No title"),
]
BEHAVIORS = [
    ("1", "U1", "11/11/2019 9:05:47 AM", "N1 N2", "N3-1 N4-0"),
    ("2", "U2", "11/12/2019 10:00:00 PM", "", "N1-0 N3-1"),
    ("3", "U1", "11/13/2019 9:05:47 AM", "N1 N2", "N4-1 N9-0 N2 N5-1"),
    ("4", "U2", "11/14/2019 1:00:00 AM", "", "N4-1"),
    ("5", "U3", "11/14/2019 2:00:00 AM", "", "N1-0"),
]


def write(directory, news=NEWS, behaviors=BEHAVIORS):
    directory.mkdir(exist_ok=True)
    (directory / "news.tsv").write_text("".join("\t".join(n + ("http://x", "[]", "[]")) + "\n" for n in news))
    (directory / "behaviors.tsv").write_text("".join("\t".join(b) + "\n" for b in behaviors))
    return directory


def texts(data, user):
    return [data.behaviors[i] for i in data.users[user]["behavior_ids"]]


def test_mind_layout(tmp_path):
    data = load_behavior_dataset("mind", path=write(tmp_path / "mind"))
    assert data.users["user_id"] == ["U1", "U2"]  # U3 never clicked anything: no behaviors
    t0 = 1573463147  # 11/11/2019 9:05:47 AM
    assert texts(data, 0) == ["First title here", 'Second "quoted" title', "Third title", "Fourth title"]
    assert data.users[0]["timestamps"] == [t0 - 2, t0 - 1, t0, t0 + 2 * 86400]
    report = data.report
    assert report.dropped_events == {"missing_text": 1}  # the click on N5, which has no title
    assert report.dropped_users == {"no_events": 1}
    assert report.impressions_read == 10
    assert report.dropped_impressions == {
        "unlabelled": 1,
        "unknown_news": 1,
        "missing_title": 1,
        "user_without_behaviors": 1,
        "empty_history": 2,
    }
    rows = sorted((r for split in data.ctr.values() for r in split), key=lambda r: r["timestamp"])
    assert [(r["user_index"], r["history_end"], r["label"]) for r in rows] == [
        (0, 2, 1),
        (0, 2, 0),
        (0, 3, 1),
        (1, 1, 1),
    ]
    first = rows[0]
    assert data.behaviors[first["ad_title_id"]] == "Third title"
    assert data.behaviors[first["ad_description_id"]] == "Abstract three"
    assert data.ctr["test"].num_rows == 1 and data.ctr["test"][0]["user_index"] == 1  # the latest impression
    report.check()


def test_history_without_clicks(tmp_path):
    data = load_behavior_dataset("mind", path=write(tmp_path / "mind"), clicks_as_behaviors=False, history_spacing=60)
    assert data.users["user_id"] == ["U1"] and data.users[0]["timestamps"] == [1573463147 - 120, 1573463147 - 60]


def test_bad_mind_files(tmp_path):
    bad_time = [BEHAVIORS[0], ("2", "U2", "yesterday", "", "N1-0")]
    with pytest.raises(BehaviorLogError, match=r"behaviors\.tsv, line 2, column 'time'"):
        load_behavior_dataset("mind", path=write(tmp_path / "a", behaviors=bad_time))
    bad_label = [("1", "U1", "11/11/2019 9:05:47 AM", "N1", "N3-7")]
    with pytest.raises(BehaviorLogError, match=r"line 1, column 'impressions'.*0 or 1"):
        load_behavior_dataset("mind", path=write(tmp_path / "b", behaviors=bad_label))
    short = [("1", "U1", "11/11/2019 9:05:47 AM", "N1")]
    with pytest.raises(BehaviorLogError, match=r"line 1: expected 5 fields"):
        load_behavior_dataset("mind", path=write(tmp_path / "c", behaviors=short))
    with pytest.raises(BehaviorLogError, match="listed twice"):
        load_behavior_dataset("mind", path=write(tmp_path / "d", news=NEWS + NEWS[:1]))
