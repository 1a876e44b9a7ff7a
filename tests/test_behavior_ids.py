"""Behavior identity beside the text (`PTUMConfig.behavior_id_buckets`): hashed id embeddings."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ptum_hf import PTUMConfig, PTUMForCTR, PTUMForDemographicClassification, PTUMModel
from ptum_hf.data import BehaviorTokenCache, CTRCollator, load_behavior_dataset, train_behavior_tokenizer
from ptum_hf.embedding import iter_user_embeddings, user_collator
from ptum_hf.finetuning import FinetuneArguments, build_collator
from ptum_hf.head_fitting import ID_BIAS_L2_GRID
from ptum_hf.pretraining import pretraining_collator
from ptum_hf.processing_ptum import text_hashes

from conftest import TINY

BUCKETS = 1000


@pytest.fixture(scope="module")
def setup():
    data = load_behavior_dataset("synthetic", num_users=60, seed=0)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=300)
    config = PTUMConfig.from_preset(
        "hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, behavior_id_buckets=BUCKETS, **TINY
    )
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, config.max_tokens_per_behavior)
    return data, tokenizer, config, cache


def test_a_text_hashes_the_same_in_every_process_and_dataset():
    texts = ["Toy Story (1995) | Animation", "ünïcode ✓", ""]
    code = f"from ptum_hf.processing_ptum import text_hashes; print([int(h) for h in text_hashes({texts!r})])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str([int(h) for h in text_hashes(texts)])  # no per-process hash seed
    assert text_hashes(["a", "b", "a"])[0] == text_hashes(["a"])[0] != text_hashes(["b"])[0]


def test_every_collator_gives_the_bucket_of_each_behavior_of_its_table(setup):
    data, tokenizer, config, cache = setup
    users = [data.users[i] for i in range(8)]
    collators = {
        "pretraining": pretraining_collator(data, tokenizer, config, token_cache=cache),
        "demographics": build_collator(FinetuneArguments(), data, tokenizer, config, cache),
        "ctr": build_collator(FinetuneArguments(task="ctr"), data, tokenizer, config, cache),
        "users": user_collator(PTUMModel(config), cache),
    }
    for name, collator in collators.items():
        rows = [data.ctr["train"][i] for i in range(8)] if name == "ctr" else users
        batch = collator(rows)
        buckets = batch["behavior_bucket_ids"]
        assert buckets.shape == batch["behavior_input_ids"].shape[:1], name
        assert ((buckets >= 0) & (buckets < BUCKETS)).all(), name
    # The bucket is the text's hash: the same behavior has the same bucket in every batch and dataset.
    table_texts = {data.behaviors[i]: i for i in range(len(data.behaviors))}
    some = list(table_texts)[:20]
    expected = text_hashes(some) % np.uint64(BUCKETS)
    assert np.array_equal(cache.bucket_ids([table_texts[t] for t in some], BUCKETS), expected.astype(np.int64))
    plain = PTUMConfig(**{**config.to_dict(), "behavior_id_buckets": 0})
    assert "behavior_bucket_ids" not in pretraining_collator(data, tokenizer, plain, token_cache=cache)(users)


def test_the_id_embedding_is_added_and_unknown_ids_keep_the_text(setup):
    data, tokenizer, config, cache = setup
    model = PTUMModel(config).eval()
    torch.nn.init.normal_(model.behavior_id_embeddings.weight)
    ids, mask = (torch.as_tensor(a) for a in cache.gather([0, 1, 2]))
    with torch.no_grad():
        text = model.encode_behaviors(ids, mask)
        known = model.encode_behaviors(ids, mask, bucket_ids=torch.tensor([5, 6, -1]))
    assert torch.allclose(known[:2], text[:2] + model.behavior_id_embeddings.weight[[5, 6]])
    assert torch.equal(known[2], text[2])  # -1: a behavior without an id row is its text alone
    with pytest.raises(ValueError, match="behavior_bucket_ids must be"):
        model.encode_behaviors(ids, mask, bucket_ids=torch.tensor([0, BUCKETS, 1]))


def test_heads_use_the_ids_and_embedding_matches_with_and_without_the_cache(setup):
    data, tokenizer, config, cache = setup
    torch.manual_seed(0)
    for head, task in ((PTUMForDemographicClassification, "demographics"), (PTUMForCTR, "ctr")):
        model = head(config).eval()
        torch.nn.init.normal_(model.ptum.behavior_id_embeddings.weight)
        collator = build_collator(FinetuneArguments(task=task), data, tokenizer, config, cache)
        rows = [data.ctr["train"][i] for i in range(8)] if task == "ctr" else [data.users[i] for i in range(8)]
        batch = collator(rows)
        with torch.no_grad():
            with_ids = model(**batch).logits
            without = model(**{k: v for k, v in batch.items() if k != "behavior_bucket_ids"}).logits
        assert not torch.allclose(with_ids, without), task
    model = PTUMModel(config).eval()
    torch.nn.init.normal_(model.behavior_id_embeddings.weight)
    cached = np.concatenate([v for _, v in iter_user_embeddings(model, data, cache)])
    again = np.concatenate([v for _, v in iter_user_embeddings(model, data, cache, use_cache=False)])
    np.testing.assert_allclose(cached, again, atol=1e-5)


def test_bucket_count_is_checked():
    for bad in (-1, 10**9, True, 2.5):
        with pytest.raises(ValueError, match="behavior_id_buckets must be"):
            PTUMConfig(behavior_id_buckets=bad).validate_ptum()


def test_streamed_texts_get_the_same_buckets_as_cached_ids(setup):
    data, tokenizer, config, cache = setup
    from ptum_hf.data import UserCollator

    users = [data.users[i] for i in range(6)]
    texts = [
        {"behavior_texts": [data.behaviors[b] for b in u["behavior_ids"]], "timestamps": u["timestamps"]} for u in users
    ]
    by_id = UserCollator(token_cache=cache, max_behaviors=20, id_buckets=BUCKETS)
    by_text = UserCollator(
        tokenizer=tokenizer, max_behaviors=20, max_tokens=config.max_tokens_per_behavior, id_buckets=BUCKETS
    )
    _, ids, _ = by_id.histories(users)
    batch = by_text(texts)
    rows = batch["history_indices"]
    expected = cache.bucket_ids(ids[ids >= 0], BUCKETS)
    assert np.array_equal(batch["behavior_bucket_ids"][rows[rows >= 0]].numpy(), expected)


def train_on(model, batch, steps=3):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()


def assert_only_moved(biases, seen):
    """The biases of the buckets `seen` in training moved from 0; every other stayed at 0."""
    assert (biases[seen] != 0).all()
    unseen = torch.ones(len(biases), dtype=torch.bool)
    unseen[seen] = False
    assert torch.equal(biases[unseen], torch.zeros(int(unseen.sum())))


def test_ad_id_bias_learns_seen_ads_and_leaves_new_ads_to_their_text(setup):
    data, tokenizer, config, cache = setup
    with pytest.raises(ValueError, match="ad_id_bias needs behavior_id_buckets"):
        PTUMConfig(**{**config.to_dict(), "behavior_id_buckets": 0, "ad_id_bias": True})
    biased = PTUMConfig(**{**config.to_dict(), "ad_id_bias": True})
    torch.manual_seed(0)
    model = PTUMForCTR(biased)
    assert torch.equal(model.ad_id_bias, torch.zeros(BUCKETS))  # a fresh model: no ad has a bias yet
    collator = build_collator(FinetuneArguments(task="ctr"), data, tokenizer, biased, cache)
    batch = collator([data.ctr["train"][i] for i in range(16)])
    train_on(model, batch)
    assert_only_moved(model.ad_id_bias, batch["behavior_bucket_ids"][batch["ad_title_indices"]].unique())
    # The logit of an ad is the text model's plus its own bias: with the bias zeroed it is the text model's.
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        expected = logits - model.ad_id_bias[batch["behavior_bucket_ids"][batch["ad_title_indices"]]]
        model.ad_id_bias.zero_()
        assert torch.allclose(model(**batch).logits, expected, atol=1e-6)
        with pytest.raises(ValueError, match="ad_id_bias needs behavior_bucket_ids"):
            model(**{k: v for k, v in batch.items() if k != "behavior_bucket_ids"})


def test_user_id_bias_learns_seen_users_and_scores_new_users_from_their_history(setup, tmp_path):
    data, tokenizer, config, cache = setup
    with pytest.raises(ValueError, match="user_id_buckets must be an integer"):
        PTUMConfig(**{**config.to_dict(), "user_id_buckets": -1})
    biased = PTUMConfig(**{**config.to_dict(), "user_id_buckets": BUCKETS})
    torch.manual_seed(0)
    model = PTUMForCTR(biased)
    assert torch.equal(model.user_id_bias, torch.zeros(BUCKETS))
    collator = build_collator(FinetuneArguments(task="ctr"), data, tokenizer, biased, cache)
    rows = [data.ctr["train"][i] for i in range(16)]
    batch = collator(rows)
    # The bucket is the user id's hash, whatever the user's row in this dataset.
    user_ids = [data.users[r["user_index"]]["user_id"] for r in rows]
    expected = (text_hashes(user_ids) % np.uint64(BUCKETS)).astype(np.int64)
    assert np.array_equal(batch["user_bucket_ids"].numpy(), expected)
    train_on(model, batch)
    assert_only_moved(model.user_id_bias, batch["user_bucket_ids"].unique())
    model.save_pretrained(tmp_path)  # what is saved loads back, biases included
    assert torch.equal(PTUMForCTR.from_pretrained(tmp_path).user_id_bias, model.user_id_bias)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        new_users = model(**{**batch, "user_bucket_ids": torch.full_like(batch["user_bucket_ids"], -1)}).logits
        assert torch.allclose(new_users, logits - model.user_id_bias[batch["user_bucket_ids"]], atol=1e-6)
        with pytest.raises(ValueError, match="user_id_buckets needs user_bucket_ids"):
            model(**{k: v for k, v in batch.items() if k != "user_bucket_ids"})
        with pytest.raises(ValueError, match=r"user_bucket_ids must hold buckets in \[0, 1000\)"):
            model(**{**batch, "user_bucket_ids": batch["user_bucket_ids"] + BUCKETS})
    # Without user ids the collator cannot give the buckets, and says so.
    with pytest.raises(ValueError, match="user_id_buckets needs user_ids="):
        CTRCollator(token_cache=cache, sequences=data.sequences(), user_id_buckets=BUCKETS)
    numbers = list(range(len(data.users)))  # ids of another type than the dataset's text would hash apart
    with pytest.raises(ValueError, match="user_ids must be strings"):
        CTRCollator(token_cache=cache, sequences=data.sequences(), user_ids=numbers, user_id_buckets=BUCKETS)


def fitted_and_reference(ads, users, labels, l2):
    """The model after `fit_id_biases` at its defaults, scikit-learn's LR on one-hot ads and users (an unpenalised
    intercept, C = 1 / l2), and the largest difference of their logits on the impressions."""
    from sklearn.linear_model import LogisticRegression

    model = PTUMForCTR(PTUMConfig(**TINY, behavior_id_buckets=50, ad_id_bias=True, user_id_buckets=40))
    model.fit_id_biases(torch.from_numpy(labels), torch.from_numpy(ads), torch.from_numpy(users), l2=l2)
    logits = (model.bias + model.ad_id_bias[ads] + model.user_id_bias[users]).detach().numpy()
    onehots = np.concatenate([np.eye(50)[ads], np.eye(40)[users]], axis=1)
    reference = LogisticRegression(C=1 / l2, tol=1e-10, max_iter=10_000).fit(onehots, labels)
    return model, reference, np.abs(logits - reference.decision_function(onehots)).max()


def test_fit_id_biases_is_the_l2_logistic_regression_on_ad_and_user_identity():
    rng = np.random.default_rng(0)
    ads, users = rng.integers(0, 30, 2000), rng.integers(0, 25, 2000)  # buckets 30-49 / 25-39: never seen
    truth = rng.normal(0, 1, 50)[ads] + rng.normal(0, 1, 40)[users] - 0.5
    labels = (rng.random(2000) < 1 / (1 + np.exp(-truth))).astype(np.float32)
    model, reference, difference = fitted_and_reference(ads, users, labels, l2=2.0)
    assert difference < 1e-4 and abs(model.bias.item() - reference.intercept_[0]) < 1e-4
    fitted = torch.cat([model.ad_id_bias, model.user_id_bias]).detach().numpy()
    seen = np.zeros(90, bool)
    seen[ads] = seen[50 + users] = True
    assert np.abs(fitted[seen] - reference.coef_[0][seen]).max() < 1e-4
    assert not fitted[~seen].any()  # an id never seen keeps its 0: scored from its text (or history) alone
    # An impression's ad or user of -1 is left out of that group (not taken as the last bucket).
    model.fit_id_biases(torch.ones(3), torch.tensor([-1, -1, 3]), torch.tensor([0, 1, 2]))
    assert model.ad_id_bias[49] == 0 and model.ad_id_bias[3] > 0
    with pytest.raises(ValueError, match="needs user_bucket_ids of shape"):
        model.fit_id_biases(torch.ones(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"ad_bucket_ids must hold buckets in \[0, 50\)"):
        model.fit_id_biases(torch.ones(1), torch.tensor([50]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels of 0 or 1"):
        model.fit_id_biases(torch.full((1,), 0.5), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="needs l2 > 0 and max_rounds >= 1"):
        model.fit_id_biases(torch.ones(1), torch.tensor([0]), torch.tensor([0]), l2=0.0)


def test_fit_id_biases_settles_on_skewed_click_rates():
    # 4% clicks overall, one ad clicked 16 times in 20 and one user in 180 of 200: undamped Newton steps from the
    # overall rate overshoot on these and swing ever wider.
    rng = np.random.default_rng(1)
    ads, users = rng.integers(1, 30, 5000), rng.integers(1, 25, 5000)
    labels = (rng.random(5000) < 0.04).astype(np.float32)
    ads[:20], labels[:20] = 0, (np.arange(20) < 16)
    users[20:220], labels[20:220] = 0, (np.arange(200) < 180)
    assert fitted_and_reference(ads, users, labels, l2=1.0)[2] < 1e-3


def test_a_new_ctr_heads_id_biases_start_from_the_training_clicks(setup, tmp_path):
    from ptum_hf.finetuning import default_training_arguments, finetune

    data, tokenizer, config, cache = setup
    biased = PTUMConfig(**{**config.to_dict(), "ad_id_bias": True, "user_id_buckets": BUCKETS})
    collator = build_collator(FinetuneArguments(task="ctr"), data, tokenizer, biased, cache)
    rows = data.ctr["train"].shuffle(seed=1).select(range(16))  # an indices mapping, as the splits have
    batch, targets = collator(list(rows)), collator.id_bias_targets(rows)
    # The targets are bucketed as the batches are.
    assert torch.equal(targets["ad_bucket_ids"], batch["behavior_bucket_ids"][batch["ad_title_indices"]])
    assert torch.equal(targets["user_bucket_ids"], batch["user_bucket_ids"])
    assert torch.equal(targets["labels"], batch["labels"])
    expected = PTUMForCTR(biased)
    expected.fit_id_biases(**collator.id_bias_targets(data.ctr["train"]))
    checkpoints = {"user model": PTUMModel(config), "CTR head without id biases": PTUMForCTR(config)}
    for name, model in checkpoints.items():
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    overrides = json.dumps({"ad_id_bias": True, "user_id_buckets": BUCKETS})

    def start(checkpoint, fit=True, l2=1.0):
        """The CTR model as fine-tuning from `checkpoint` starts it: no step moves a bias at a learning rate of 0."""
        args = FinetuneArguments(
            task="ctr",
            model_name_or_path=str(tmp_path / checkpoint),
            dataset="synthetic",
            num_users=60,
            config_overrides=overrides,
            fit_id_biases=fit,
            id_bias_l2=l2,
        )
        training_args = default_training_arguments(
            str(tmp_path / "out"), "ctr", max_steps=1, learning_rate=0.0, eval_strategy="no", save_strategy="no"
        )
        return finetune(args, training_args, data=data, tokenizer=tokenizer, token_cache=cache)[0].model

    for checkpoint in checkpoints:  # biases the checkpoint did not train start from the clicks
        model = start(checkpoint)
        assert torch.allclose(model.ad_id_bias, expected.ad_id_bias) and model.ad_id_bias.any()
        assert torch.allclose(model.user_id_bias, expected.user_id_bias) and model.bias == expected.bias
    # A new head's user/ad score starts at 0: the start scores identity alone; a trained head keeps its projection.
    new = start("user model").eval()
    assert not new.ad_projection.weight.any() and not new.ad_projection.bias.any()
    with torch.no_grad():
        logits = new(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.allclose(logits, new.id_bias_logits(targets["ad_bucket_ids"], targets["user_bucket_ids"]), atol=1e-6)
    trained = checkpoints["CTR head without id biases"].ad_projection.weight
    assert torch.equal(start("CTR head without id biases").ad_projection.weight, trained) and trained.any()
    unfitted = start("user model", fit=False, l2=None)
    assert not unfitted.ad_id_bias.any() and not unfitted.user_id_bias.any()
    with torch.no_grad():
        model.user_id_bias.add_(1.0)  # as a trained head's would differ from a fresh fit
    model.save_pretrained(tmp_path / "trained")
    tokenizer.save_pretrained(tmp_path / "trained")
    assert torch.equal(start("trained").user_id_bias, model.user_id_bias)  # a trained CTR head keeps its biases
    # By default the penalty is the one whose identity-only model scores best on the validation impressions.
    held = collator.id_bias_targets(data.ctr["validation"])
    labels = held.pop("labels").numpy()
    aucs = {}
    for l2 in ID_BIAS_L2_GRID:
        expected.fit_id_biases(**collator.id_bias_targets(data.ctr["train"]), l2=l2)
        aucs[l2] = roc_auc_score(labels, expected.id_bias_logits(**held).numpy())
    best = max(ID_BIAS_L2_GRID, key=aucs.get)
    assert len(set(aucs.values())) > 1  # the choice matters on this data
    expected.fit_id_biases(**collator.id_bias_targets(data.ctr["train"]), l2=best)
    chosen = start("user model", l2=None)
    assert torch.allclose(chosen.ad_id_bias, expected.ad_id_bias)
    assert torch.allclose(chosen.user_id_bias, expected.user_id_bias)
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="id_bias_l2 must be a finite number > 0"):
            FinetuneArguments(task="ctr", id_bias_l2=bad)
    for pointless in (dict(task="demographics"), dict(task="ctr", fit_id_biases=False)):
        with pytest.raises(ValueError, match="id_bias_l2 has no effect"):
            FinetuneArguments(id_bias_l2=1.0, **pointless)


def test_id_bias_logits_are_the_ctr_logits_of_identity_alone(setup):
    data, tokenizer, config, cache = setup
    biased = PTUMConfig(**{**config.to_dict(), "ad_id_bias": True, "user_id_buckets": BUCKETS})
    model = PTUMForCTR(biased).eval()
    with torch.no_grad():
        model.ad_id_bias.normal_()
        model.user_id_bias.normal_()
        model.bias.fill_(0.3)
        model.ad_projection.weight.zero_()  # the user . ad term is then 0: what is left is identity
        model.ad_projection.bias.zero_()
    collator = build_collator(FinetuneArguments(task="ctr"), data, tokenizer, biased, cache)
    rows = data.ctr["train"].select(range(16))
    batch, targets = collator(list(rows)), collator.id_bias_targets(rows)
    targets["user_bucket_ids"][:3] = -1  # new users: no user bias, as in forward
    batch["user_bucket_ids"][:3] = -1
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    identity = model.id_bias_logits(targets["ad_bucket_ids"], targets["user_bucket_ids"])
    assert torch.allclose(identity, logits, atol=1e-5)
    with pytest.raises(ValueError, match="needs user_bucket_ids"):
        model.id_bias_logits(targets["ad_bucket_ids"])
    with pytest.raises(ValueError, match=r"buckets in \[0, 1000\) or -1"):
        model.id_bias_logits(targets["ad_bucket_ids"], targets["user_bucket_ids"] + BUCKETS)
    with pytest.raises(ValueError, match="a model with id biases"):
        PTUMForCTR(config).id_bias_logits()
