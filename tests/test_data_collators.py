"""Collators: the exact batch layout, the MBP/NBP rules (hypothesis properties), negatives, workers, Trainer."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptum_hf.data import (
    BehaviorTokenCache,
    CTRCollator,
    DemographicsCollator,
    NegativeSampler,
    PretrainingCollator,
    UserSequences,
    load_behavior_dataset,
    train_behavior_tokenizer,
)

PRETRAINING_KEYS = {
    "behavior_input_ids",
    "behavior_attention_mask",
    "mbp_history_indices",
    "mbp_history_time_gaps",
    "mbp_candidate_indices",
    "mbp_labels",
    "nbp_history_indices",
    "nbp_history_time_gaps",
    "nbp_candidate_indices",
    "nbp_labels",
}


def fake_cache(vocab: int, seed: int = 0) -> BehaviorTokenCache:
    """Behavior b's tokens start with b + 3 (so a table row identifies its behavior), 1-5 tokens long."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, vocab)
    offsets = np.r_[0, np.cumsum(lengths)]
    tokens = rng.integers(3, 50, offsets[-1]).astype(np.int32)
    tokens[offsets[:-1]] = np.arange(vocab) + 3
    return BehaviorTokenCache(token_ids=tokens, offsets=offsets, pad_token_id=0, max_tokens=5)


def table_ids(batch) -> np.ndarray:
    return batch["behavior_input_ids"][:, 0].numpy() - 3


@st.composite
def batches(draw):
    vocab = draw(st.integers(2, 12))
    users = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 12))
        ids = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
        gaps = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
        users.append(
            {"user_id": f"u{len(users)}", "behavior_ids": ids, "timestamps": np.cumsum(gaps).tolist(), "age": 1}
        )
    return vocab, users


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches(),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from(["occurrence", "uniform", "batch"]),
    st.integers(0, 2**16),
)
def test_pretraining_properties(data, max_behaviors, num_next, num_negatives, sampling, seed):
    vocab, users = data
    pool = np.arange(vocab).repeat(2)
    sampler = (
        None
        if sampling == "batch"
        else NegativeSampler(pool if sampling == "occurrence" else np.arange(vocab), weighting=sampling)
    )
    collator = PretrainingCollator(
        token_cache=fake_cache(vocab),
        negative_sampler=sampler,
        seed=seed,
        max_behaviors=max_behaviors,
        num_next=num_next,
        num_negatives=num_negatives,
        negative_sampling=sampling,
    )
    batch = collator(users)
    assert set(batch) == PRETRAINING_KEYS
    ids = table_ids(batch)
    M, P, K = len(ids), num_negatives, num_next
    assert len(set(ids.tolist())) == M, "the behavior table has duplicates"
    assert batch["behavior_attention_mask"].sum(1).min() >= 1
    for name in ("mbp_candidate_indices", "nbp_candidate_indices"):
        assert batch[name].min() >= 0 and batch[name].max() < M
    for name in ("mbp_history_indices", "nbp_history_indices"):
        assert batch[name].min() >= -2 and batch[name].max() < M

    # in-batch sampling draws from the events the collator read; only a pool without any other behavior than the
    # positive makes an example impossible (-100)
    batch_pool = set(np.concatenate([u["behavior_ids"][-(max_behaviors + K) :] for u in users]).tolist())

    def impossible(label, positive):
        return label == -100 and sampling == "batch" and batch_pool == {positive}

    for b, user in enumerate(users):
        seq, times = np.array(user["behavior_ids"]), np.array(user["timestamps"])
        n = len(seq)
        # MBP
        history = batch["mbp_history_indices"][b].numpy()
        gaps = batch["mbp_history_time_gaps"][b].numpy()
        window = seq[-max_behaviors:]
        w = len(window)
        assert (history[w:] == -1).all() and (gaps[w:] == 0).all()
        assert np.allclose(gaps[:w], times[-w:][-1] - times[-w:])
        label = int(batch["mbp_labels"][b])
        if n < 2:
            assert label == -100 and (history[:w] >= 0).all()
        else:
            assert (history[:w] == -2).sum() == 1
            slot = int(np.flatnonzero(history[:w] == -2)[0])
            masked = window[slot]
            unmasked = np.delete(history[:w], slot)
            assert (ids[unmasked] == np.delete(window, slot)).all()
            candidates = ids[batch["mbp_candidate_indices"][b].numpy()]
            if impossible(label, masked):
                continue
            assert candidates.shape == (P + 1,) and 0 <= label <= P
            assert candidates[label] == masked and (candidates == masked).sum() == 1
            # the masked occurrence is elsewhere in the history only if it really occurs twice
            assert (ids[unmasked] == masked).sum() == (np.delete(window, slot) == masked).sum()
        # NBP
        available = min(K, n - 1)
        cut = n - available
        expected = seq[:cut][-max_behaviors:]
        history = batch["nbp_history_indices"][b].numpy()
        assert cut >= 1 and (ids[history[: len(expected)]] == expected).all()
        assert (history[len(expected) :] == -1).all()
        assert np.allclose(
            batch["nbp_history_time_gaps"][b, : len(expected)].numpy(), times[:cut][-1] - times[:cut][-max_behaviors:]
        )
        for k in range(K):
            label = int(batch["nbp_labels"][b, k])
            if k >= available:
                assert label == -100
                continue
            positive = seq[cut + k]
            candidates = ids[batch["nbp_candidate_indices"][b, k].numpy()]
            if impossible(label, positive):
                continue
            assert 0 <= label <= P and candidates[label] == positive and (candidates == positive).sum() == 1


def test_dtypes_and_shapes():
    users = [{"behavior_ids": [0, 1, 2, 3], "timestamps": [1, 2, 3, 4]}, {"behavior_ids": [4, 5], "timestamps": [5, 9]}]
    collator = PretrainingCollator(token_cache=fake_cache(8), negative_sampler=NegativeSampler(np.arange(8)), seed=0)
    batch = collator(users)
    assert batch["behavior_input_ids"].dtype == torch.long and batch["behavior_attention_mask"].dtype == torch.long
    assert batch["mbp_history_time_gaps"].dtype == torch.float32
    assert batch["mbp_labels"].dtype == torch.long and batch["nbp_labels"].shape == (2, 2)
    assert batch["mbp_candidate_indices"].shape == (2, 5) and batch["nbp_candidate_indices"].shape == (2, 2, 5)
    assert batch["mbp_history_indices"].shape == (2, 4) and batch["nbp_history_indices"].shape == (2, 2)
    # L is the longest behavior of the batch, padding is 0 exactly where the mask is 0
    lengths = batch["behavior_attention_mask"].sum(1)
    assert batch["behavior_input_ids"].shape[1] == int(lengths.max())
    assert (batch["behavior_input_ids"][batch["behavior_attention_mask"] == 0] == 0).all()


def test_nbp_rule_for_short_users():
    users = [
        {"behavior_ids": [0], "timestamps": [0]},
        {"behavior_ids": [1, 2], "timestamps": [0, 1]},
        {"behavior_ids": [3, 4, 5], "timestamps": [0, 1, 2]},
    ]
    batch = PretrainingCollator(token_cache=fake_cache(8), negative_sampler=NegativeSampler(np.arange(8)))(users)
    assert batch["nbp_labels"][0].tolist() == [-100, -100]
    assert batch["nbp_labels"][1, 0] >= 0 and batch["nbp_labels"][1, 1] == -100
    assert (batch["nbp_labels"][2] >= 0).all()
    assert (batch["nbp_history_indices"] >= 0).sum(1).tolist() == [1, 1, 1]
    assert batch["mbp_labels"][0] == -100


def test_negatives_never_the_positive_in_a_tiny_corpus():
    # Two distinct behaviors, the positive dominating the pool: negatives must still differ from it.
    sampler = NegativeSampler(np.array([0] * 1000 + [1]))
    rng = np.random.default_rng(0)
    negatives, impossible = sampler.sample(np.zeros(50, np.int64), 4, rng)
    assert (negatives == 1).all() and not impossible.any()
    negatives, impossible = NegativeSampler(np.array([7, 7])).sample(np.array([7]), 3, rng)
    assert impossible.all()
    users = [{"behavior_ids": [0, 0, 0], "timestamps": [0, 1, 2]}]
    batch = PretrainingCollator(token_cache=fake_cache(2), negative_sampler=NegativeSampler(np.array([0, 0, 0])))(users)
    assert (batch["mbp_labels"] == -100).all() and (batch["nbp_labels"] == -100).all()


def test_negatives_avoid_the_users_own_behaviors_and_follow_occurrence():
    rng = np.random.default_rng(0)
    sampler = NegativeSampler(np.array([0, 1, 2, 3] + [4] * 96))
    own = np.array([0 * 10 + 1, 0 * 10 + 2])  # user row 0 owns behaviors 1 and 2
    negatives, _ = sampler.sample(
        np.zeros(2000, np.int64), 4, rng, owners=np.zeros(2000, np.int64), own_keys=own, key_base=10
    )
    assert not np.isin(negatives, [0, 1, 2]).any()
    assert (negatives == 4).mean() > 0.9  # by occurrence, behavior 4 dominates


def test_batch_sampling_draws_from_other_users():
    users = [{"behavior_ids": [0, 1, 2], "timestamps": [0, 1, 2]}, {"behavior_ids": [5, 6, 7], "timestamps": [0, 1, 2]}]
    collator = PretrainingCollator(token_cache=fake_cache(10), negative_sampling="batch", seed=1)
    batch = collator(users)
    ids = table_ids(batch)
    for b, others in ((0, {5, 6, 7}), (1, {0, 1, 2})):
        candidates = ids[batch["mbp_candidate_indices"][b].numpy()]
        label = int(batch["mbp_labels"][b])
        assert set(np.delete(candidates, label).tolist()) <= others


def test_seed_reproducible_and_pickle():
    users = [{"behavior_ids": list(range(i, i + 6)), "timestamps": list(range(6))} for i in range(5)]
    make = lambda: PretrainingCollator(
        token_cache=fake_cache(20), negative_sampler=NegativeSampler(np.arange(20)), seed=3
    )  # noqa: E731
    a, b = make()(users), make()(users)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = pickle.loads(pickle.dumps(make()))(users)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_unsorted_or_empty_rows_are_refused():
    collator = PretrainingCollator(token_cache=fake_cache(5), negative_sampler=NegativeSampler(np.arange(5)))
    with pytest.raises(ValueError, match="time order"):
        collator([{"user_id": "x", "behavior_ids": [0, 1], "timestamps": [5, 1]}])
    with pytest.raises(ValueError, match="no behaviors"):
        collator([{"user_id": "x", "behavior_ids": [], "timestamps": []}])
    with pytest.raises(ValueError, match="negative_sampler"):
        PretrainingCollator(token_cache=fake_cache(5))([{"behavior_ids": [0, 1], "timestamps": [0, 1]}])


@pytest.fixture(scope="module")
def synthetic():
    data = load_behavior_dataset("synthetic", num_users=300, seed=0)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=2000)
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, max_tokens=30)
    return data, tokenizer, cache


def test_dataloader_workers_and_extra_columns(synthetic):
    data, tokenizer, cache = synthetic
    collator = PretrainingCollator.from_dataset(data, tokenizer, token_cache=cache, seed=0)
    loader = torch.utils.data.DataLoader(
        data.users.select(range(64)), batch_size=16, num_workers=2, collate_fn=collator
    )
    batches = list(loader)
    assert len(batches) == 4 and all(set(b) == PRETRAINING_KEYS for b in batches)
    assert batches[0]["behavior_input_ids"].shape[1] <= 30


def test_demographics_collator(synthetic):
    data, tokenizer, cache = synthetic
    collator = DemographicsCollator(token_cache=cache, label_names=["age", "gender"], max_behaviors=10)
    rows = [data.users[i] for i in range(4)]
    rows[1] = {**rows[1], "age": None}
    batch = collator(rows)
    assert set(batch) == {
        "behavior_input_ids",
        "behavior_attention_mask",
        "history_indices",
        "history_time_gaps",
        "labels",
    }
    assert batch["labels"].shape == (4, 2) and batch["labels"][1, 0] == -100
    assert batch["labels"][0].tolist() == [rows[0]["age"], rows[0]["gender"]]
    assert batch["history_indices"].shape[1] == 10
    rows_table = batch["behavior_input_ids"]
    expected, _ = cache.gather(np.array(rows[0]["behavior_ids"][-10:]))
    got = rows_table[batch["history_indices"][0]]
    assert torch.equal(got[:, : expected.shape[1]], torch.from_numpy(expected))
    with pytest.raises(KeyError, match="occupation"):
        DemographicsCollator(token_cache=cache, label_names=["occupation"])(rows)


def test_ctr_collator(synthetic):
    data, tokenizer, cache = synthetic
    collator = CTRCollator.from_dataset(data, tokenizer, token_cache=cache, max_behaviors=7)
    rows = [data.ctr["train"][i] for i in range(8)]
    rows[0] = {**rows[0], "ad_description_id": -1}
    batch = collator(rows)
    assert set(batch) == {
        "behavior_input_ids",
        "behavior_attention_mask",
        "history_indices",
        "history_time_gaps",
        "ad_title_indices",
        "ad_description_indices",
        "labels",
    }
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [float(r["label"]) for r in rows]
    assert batch["ad_description_indices"][0] == -1 and (batch["ad_description_indices"][1:] >= 0).all()
    sequences = data.sequences()
    for b, row in enumerate(rows):
        ids, times = sequences.user(row["user_index"])
        expected = ids[: row["history_end"]][-7:]
        history = batch["history_indices"][b]
        tokens = batch["behavior_input_ids"][history[history >= 0]]
        want, _ = cache.gather(expected)
        assert torch.equal(tokens[:, : want.shape[1]], torch.from_numpy(want))
        title, _ = cache.gather(np.array([row["ad_title_id"]]))
        got = batch["behavior_input_ids"][batch["ad_title_indices"][b]]
        assert torch.equal(got[: title.shape[1]], torch.from_numpy(title[0]))
    with pytest.raises(ValueError, match="history_end"):
        collator([{**rows[0], "history_end": 0}])


def test_text_rows_dedupe_and_tokenize(synthetic):
    data, tokenizer, cache = synthetic
    rows = [
        {
            "user_id": u["user_id"],
            "behavior_texts": [data.behaviors[i] for i in u["behavior_ids"]],
            "timestamps": u["timestamps"],
        }
        for u in (data.users[i] for i in range(8))
    ]
    rows.append({"user_id": "dup", "behavior_texts": ["same text", "same text", "other"], "timestamps": [1, 2, 3]})
    collator = PretrainingCollator(tokenizer=tokenizer, seed=0, text_buffer_size=50)
    batch = collator(rows)
    assert set(batch) == PRETRAINING_KEYS
    table = batch["behavior_input_ids"].numpy()
    assert len({tuple(r) for r in table.tolist()}) == len(table)
    assert len(collator._buffer) == 50
    for sampling in ("batch", "uniform"):
        batch = PretrainingCollator(tokenizer=tokenizer, seed=0, negative_sampling=sampling)(rows)
        assert (batch["mbp_labels"] >= 0).all()
    demographics = DemographicsCollator(tokenizer=tokenizer, label_names=[])(rows)
    assert demographics["labels"].shape == (9, 0)


def test_trainer_accepts_the_collator(synthetic, tmp_path):
    from transformers import Trainer, TrainingArguments

    data, tokenizer, cache = synthetic

    class Probe(torch.nn.Module):
        """Takes exactly the pre-training batch; checks that nothing else reaches the model."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **batch):
            assert set(batch) == PRETRAINING_KEYS
            return {"loss": ((self.weight - batch["mbp_history_time_gaps"].mean().clamp(max=1)) ** 2).sum()}

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    collator = PretrainingCollator.from_dataset(data, tokenizer, token_cache=cache, seed=0)
    trainer = Trainer(model=Probe(), args=args, train_dataset=data.users, data_collator=collator)
    assert trainer.train().global_step == 2


def test_collates_many_batches_in_a_row(synthetic):
    # Speed is measured in benchmarks/, not here: this only checks repeated calls keep the layout valid.
    data, tokenizer, cache = synthetic
    collator = PretrainingCollator.from_dataset(data, tokenizer, token_cache=cache, seed=0)
    rows = data.users.select(range(256)).to_list()
    for i in range(0, 256, 64):
        batch = collator(rows[i : i + 64])
        assert batch["mbp_candidate_indices"].max() < batch["behavior_input_ids"].shape[0]


def test_user_sequences_roundtrip(synthetic):
    data, _, _ = synthetic
    sequences = UserSequences.from_dataset(data.users.select([3, 1]))
    assert sequences.user(0)[0].tolist() == data.users[3]["behavior_ids"]
    assert sequences.user(1)[1].tolist() == data.users[1]["timestamps"]
