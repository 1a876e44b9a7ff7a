"""Bag prediction (`PTUMConfig.use_bag`): the collator's view and the model's loss."""

import numpy as np
import pytest
import torch

from ptum_hf import PTUMConfig, PTUMForPretraining
from ptum_hf.data import load_behavior_dataset, train_behavior_tokenizer
from ptum_hf.pretraining import pretraining_collator

from conftest import TINY

BAG_KEYS = {"bag_history_indices", "bag_history_time_gaps", "bag_target_indices"}


@pytest.fixture(scope="module")
def setup():
    data = load_behavior_dataset("synthetic", num_users=60, seed=0)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=300)
    config = PTUMConfig.from_preset("hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY)
    return data, tokenizer, config


def batch_of(setup, **overrides):
    data, tokenizer, config = setup
    config = PTUMConfig(**{**config.to_dict(), **overrides})
    return config, pretraining_collator(data, tokenizer, config, seed=3)([data.users[i] for i in range(16)])


def test_bag_view_hides_part_of_the_window_and_predicts_all_of_it(setup):
    config, batch = batch_of(setup, use_bag=True, bag_dropout=0.5)
    targets, inputs = batch["bag_target_indices"], batch["bag_history_indices"]
    mbp = batch["mbp_history_indices"]
    assert torch.equal(targets >= 0, mbp != -1)  # the MBP window, every behavior of it a target
    assert torch.equal(torch.where(mbp == -2, targets, mbp)[mbp != -2], targets[mbp != -2])
    kept = inputs >= 0
    assert torch.equal(inputs[kept], targets[kept]) and (kept.sum(1) >= 1).all()  # hidden slots are -1, one stays
    share = 1 - kept.sum() / (targets >= 0).sum()
    assert 0.35 < float(share) < 0.65
    assert torch.equal(batch["bag_history_time_gaps"], batch["mbp_history_time_gaps"])


def test_without_bag_the_batch_is_what_it_was(setup):
    _, plain = batch_of(setup)
    _, with_bag = batch_of(setup, use_bag=True)
    assert not BAG_KEYS & set(plain) and BAG_KEYS <= set(with_bag)
    for key, value in plain.items():  # the bag draws come last: MBP and NBP examples do not change
        assert torch.equal(value, with_bag[key]), key


def test_bag_loss_is_a_softmax_over_the_behavior_table(setup):
    config, batch = batch_of(setup, use_bag=True, bag_weight=0.5)
    torch.manual_seed(0)
    model = PTUMForPretraining(config).eval()
    with torch.no_grad():
        out = model(**batch)
        table = model.ptum.encode_behaviors(batch["behavior_input_ids"], batch["behavior_attention_mask"])
        user = model.ptum.encode_users(table, batch["bag_history_indices"], batch["bag_history_time_gaps"])[1]
    log_probs = (user @ table.T).log_softmax(-1).numpy()
    targets = batch["bag_target_indices"].numpy()
    expected = -np.mean([log_probs[b, t] for b, row in enumerate(targets) for t in row if t >= 0])
    assert float(out.bag_loss) == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(float(out.mbp_loss + out.nbp_loss + 0.5 * out.bag_loss), rel=1e-5)
    assert out.bag_logits.shape == (16, batch["behavior_input_ids"].shape[0]) and 0.0 <= float(out.bag_accuracy) <= 1


def test_bag_alone_trains_and_is_off_by_default(setup):
    config, batch = batch_of(setup, use_bag=True, use_mbp=False, use_nbp=False)
    model = PTUMForPretraining(config)
    out = model(**batch)
    assert out.mbp_loss is None and out.nbp_loss is None and torch.equal(out.loss, out.bag_loss)
    out.loss.backward()
    assert model.ptum.behavior_encoder.word_embeddings.weight.grad.abs().sum() > 0
    off = PTUMForPretraining(setup[2])(**batch)  # use_bag False: the bag inputs are not used
    assert off.bag_loss is None and PTUMConfig().use_bag is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bag_dropout": 1.0}, "bag_dropout must be in"),
        ({"bag_weight": -1.0}, "bag_weight must be"),
        ({"use_bag": "yes"}, "use_bag must be true or false"),
        ({"use_mbp": False, "use_nbp": False}, "at least one pre-training task"),
    ],
)
def test_bag_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        PTUMConfig(**overrides).validate_ptum()
