"""The synthetic source: determinism, shape of the data, and the planted structure."""

import numpy as np
import pytest

from ptum_hf.data import SyntheticConfig, load_behavior_dataset


@pytest.fixture(scope="module")
def data():
    return load_behavior_dataset("synthetic", num_users=2000, seed=0)


def test_deterministic_by_seed():
    a = load_behavior_dataset("synthetic", num_users=100, seed=1)
    b = load_behavior_dataset("synthetic", num_users=100, seed=1)
    c = load_behavior_dataset("synthetic", num_users=100, seed=2)
    assert a.behaviors == b.behaviors and a.users["behavior_ids"] == b.users["behavior_ids"]
    assert a.users["age"] == b.users["age"] and a.ctr["test"]["label"] == b.ctr["test"]["label"]
    assert a.users["behavior_ids"] != c.users["behavior_ids"]
    # a prefix of users does not depend on how many users are generated
    big = load_behavior_dataset("synthetic", num_users=3000, seed=1)
    assert big.users[99]["timestamps"] == a.users[99]["timestamps"]


def test_shape_of_the_data(data):
    config = SyntheticConfig()
    lengths = np.array([len(ids) for ids in data.users["behavior_ids"]])
    assert data.users.num_rows == 2000 and lengths.min() >= config.min_length and lengths.max() <= config.max_length
    assert 20 < lengths.mean() < 40
    assert all(np.all(np.diff(t) > 0) for t in data.users["timestamps"][:200])
    words = np.array([len(data.behaviors[i].split()) for i in range(0, len(data.behaviors), 7)])
    assert words.min() >= 3 and words.max() <= 16  # titles 3-8 words; ad descriptions up to 16
    ids = np.concatenate(data.users["behavior_ids"])
    counts = np.bincount(ids)
    assert (counts > 1).sum() > 1000 and (counts == 1).sum() > 1000  # shared catalogue and fresh titles
    assert len(set(data.behaviors)) == len(data.behaviors)
    assert data.label_heads == {"age": 4, "gender": 2}
    assert min(np.bincount(data.users["age"], minlength=4)) > 100
    data.report.check()


def test_ctr_task(data):
    ctr = data.ctr
    assert set(ctr) == {"train", "validation", "test"}
    total = sum(split.num_rows for split in ctr.values())
    assert total == 5 * 2000 and ctr["test"].num_rows == 1000
    assert max(ctr["validation"]["timestamp"]) <= min(ctr["test"]["timestamp"])
    train = ctr["train"].with_format("numpy")[:]
    lengths = data.sequences().lengths
    assert (train["history_end"] >= 5).all() and (train["history_end"] <= lengths[train["user_index"]]).all()
    assert 0.1 < train["label"].mean() < 0.4
    assert (train["ad_description_id"] >= 0).all() and train["ad_title_id"].max() < len(data.behaviors)


def test_labels_need_the_whole_history(data):
    """Planted structure: a label is barely predictable from one behavior, well from the history."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    texts = np.array(data.behaviors, dtype=object)
    vectorizer = CountVectorizer(min_df=5).fit(data.behaviors)
    sequences = data.users["behavior_ids"]
    history = vectorizer.transform([" ".join(texts[ids]) for ids in sequences])
    single = vectorizer.transform([texts[ids[-1]] for ids in sequences])
    age = np.array(data.users["age"])
    majority = np.bincount(age[1500:]).max() / 500

    def accuracy(features):
        model = MultinomialNB().fit(features[:1500], age[:1500])
        return model.score(features[1500:], age[1500:])

    from_history, from_single = accuracy(history), accuracy(single)
    print(f"age accuracy: history {from_history:.3f}, last behavior {from_single:.3f}, majority {majority:.3f}")
    assert from_single < majority + 0.12
    assert from_history > majority + 0.2 and from_history > from_single + 0.15


def test_bad_config():
    with pytest.raises(ValueError, match="num_users"):
        load_behavior_dataset("synthetic", num_users=0)
    with pytest.raises(ValueError, match="label_noise"):
        load_behavior_dataset("synthetic", num_users=10, label_noise=2)
    with pytest.raises(ValueError, match="unknown behavior dataset"):
        load_behavior_dataset("nope")


def test_columns_and_the_splits_follow_the_rows_a_dataset_selects(data):
    from ptum_hf.data.dataset import columns
    from ptum_hf.data.splits import ctr_splits, demographics_splits, split_users_three_way

    rows = data.ctr["train"].shuffle(seed=3).select(range(50))  # an indices mapping, as splits make
    users, labels = columns(rows, "user_index", "label")
    assert users.tolist() == [row["user_index"] for row in rows] and labels.tolist() == rows["label"][:]
    assert users.dtype == np.int64 and users.flags.writeable
    assert columns({"label": [1, 0]}, "label")[0].tolist() == [1, 0]
    with pytest.raises(KeyError, match="clicks"):
        columns(rows, "clicks")
    gap = data.users.select(range(3)).map(lambda row, i: {"age": None if i == 1 else row["age"]}, with_indices=True)
    with pytest.raises(ValueError, match="'age' has 1 missing"):
        columns(gap, "age")
    # The CTR label cut: every impression, in order, of the first 20% of a seeded shuffle of the training users.
    everything = data.ctr["train"]
    ids = np.unique(everything["user_index"][:])
    kept = set(np.random.default_rng(4 + 1).permutation(ids)[: round(0.2 * len(ids))].tolist())
    assert list(ctr_splits(data, 0.2, 4)[0]) == [row for row in everything if row["user_index"] in kept]
    # Demographics: the users with at least one of the labels.
    some = data.users.select(range(300)).map(
        lambda row, i: {"gender": None if i % 3 == 0 else row["gender"], "age": None if i % 5 == 0 else row["age"]},
        with_indices=True,
    )
    subset = type(data)(users=some, behaviors=data.behaviors, report=data.report)
    for names in (["gender"], ["gender", "age"]):
        labeled = some.filter(lambda row, names=names: any(row[name] is not None for name in names))
        expected = [part["user_id"][:] for part in split_users_three_way(labeled, 2)]
        assert [part["user_id"][:] for part in demographics_splits(subset, names, 1.0, 2)] == expected
