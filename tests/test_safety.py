"""Safety: untrusted checkpoints (pickle weights, hostile config.json, remote code) and numerically hostile inputs.

See SECURITY.md for what is trusted and what the library does about the rest.
"""

import json
import os
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig

from ptum_hf import (
    PTUMConfig,
    PTUMForCTR,
    PTUMForDemographicClassification,
    PTUMForPretraining,
    PTUMModel,
    build_behavior_table,
)
from ptum_hf.configuration_ptum import BEHAVIOR_ENCODER_TYPES, USER_ENCODER_TYPES

from conftest import TINY_CONFIG, run_python

# A one-layer BERT stands in for MiniLM in the `pretrained` behavior encoder: same code path, tiny and offline.
TINY_BERT = BertConfig(
    vocab_size=60,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
).to_dict()
HEADS = [PTUMModel, PTUMForPretraining, PTUMForDemographicClassification, PTUMForCTR]
# Every behavior encoder and every user encoder, each at least once (the full cross is in test_modeling.py).
ENCODER_PAIRS = [(b, USER_ENCODER_TYPES[i % len(USER_ENCODER_TYPES)]) for i, b in enumerate(BEHAVIOR_ENCODER_TYPES)]


def tiny_config(behavior_encoder_type="attention", **overrides):
    extra = {"text_encoder_config": TINY_BERT} if behavior_encoder_type == "pretrained" else {}
    return PTUMConfig(**{**TINY_CONFIG, "behavior_encoder_type": behavior_encoder_type, **extra, **overrides})


def write_checkpoint(folder: Path, config_dict: dict, weights: bytes = b"not a safetensors file"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on shared cores: one intra-op thread is several times faster than two that contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- pickle weights


@pytest.fixture
def pickle_checkpoint(tmp_path):
    """A checkpoint converted to the legacy format: torch.save of the state dict + config.json, no safetensors."""
    model = PTUMForDemographicClassification(tiny_config()).eval()
    folder = tmp_path / "pickle_ckpt"
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert {p.name for p in folder.iterdir()} == {"config.json", "pytorch_model.bin"}
    return model, folder


@pytest.mark.parametrize("loader", [PTUMForDemographicClassification, PTUMModel, AutoModel])
def test_pickle_only_checkpoint_is_refused(pickle_checkpoint, loader):
    _, folder = pickle_checkpoint
    with pytest.raises(OSError) as caught:
        loader.from_pretrained(folder)
    message = str(caught.value)
    assert "only pickle weights (pytorch_model.bin)" in message
    assert "arbitrary code" in message
    assert "use_safetensors=False" in message  # how to opt in
    assert "save_pretrained" in message and "model.safetensors" in message  # how to convert


def test_pickle_weights_file_given_directly_is_refused(pickle_checkpoint):
    model, folder = pickle_checkpoint
    with pytest.raises(OSError, match=r"pytorch_model\.bin' is not a safetensors file.*use_safetensors=False"):
        PTUMForDemographicClassification.from_pretrained(folder / "pytorch_model.bin", config=model.config)


def test_pickle_checkpoint_loads_after_explicit_opt_in_and_converts(pickle_checkpoint, tmp_path):
    model, folder = pickle_checkpoint
    loaded, info = PTUMForDemographicClassification.from_pretrained(
        folder, use_safetensors=False, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    # The conversion the error message suggests: save once, then the safe default loads it.
    loaded.save_pretrained(tmp_path / "converted")
    assert (tmp_path / "converted" / "model.safetensors").exists()
    again = PTUMForDemographicClassification.from_pretrained(tmp_path / "converted")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_safetensors_wins_when_both_are_present(pickle_checkpoint):
    model, folder = pickle_checkpoint
    model.save_pretrained(folder)  # adds model.safetensors next to pytorch_model.bin
    (folder / "pytorch_model.bin").write_bytes(b"a pickle that must never be opened")
    loaded = PTUMForDemographicClassification.from_pretrained(folder)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_freezing_is_reapplied_after_load_with_loading_info(tmp_path):
    PTUMForCTR(tiny_config(freeze_user_model=True)).save_pretrained(tmp_path)
    loaded, info = PTUMForCTR.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(p.requires_grad for p in loaded.ptum.parameters())
    assert loaded.bias.requires_grad


def test_pickle_only_hub_repo_is_refused_offline(tmp_path, monkeypatch):
    model = PTUMModel(tiny_config())
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--stranger--ptum" / "snapshots" / revision
    model.config.save_pretrained(snapshot)
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"Hub repository 'stranger/ptum' holds only pickle weights \(pytorch_model"):
        PTUMModel.from_pretrained("stranger/ptum")
    loaded = PTUMModel.from_pretrained("stranger/ptum", use_safetensors=False)
    assert torch.equal(loaded.mask_embedding, model.mask_embedding)


# ----------------------------------------------------------------------------- config.json


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dropout": 5.0}, "dropout must be in"),
        ({"hidden_size": -16}, "hidden_size must be a positive integer"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"behavior_encoder_type": "os.system"}, "behavior_encoder_type must be one of"),
        ({"nbp_weight": float("nan")}, "nbp_weight"),
        ({"use_mbp": "false"}, "use_mbp must be true or false"),
        ({"pad_token_id": 60}, r"pad_token_id must be an id in \[0, vocab_size=60\)"),
        ({"label_heads": {"age": 1}}, "label_heads"),
        ({"hidden_size": 10**7}, r"hidden_size must be at most 65536 \(PTUMConfig's upper bound\), got 10000000"),
        ({"vocab_size": 10**9}, r"vocab_size must be at most 10000000"),
        ({"label_heads": {"age": 10**7}}, r"label_heads\['age'\] \(number of classes\) must be at most 1000000"),
        (
            {"behavior_encoder_type": "pretrained", "text_encoder_config": {"model_type": "ptum"}},
            "must name a model type built into transformers",
        ),
        ({"hidden_sise": 16}, "unknown PTUMConfig key.*hidden_sise"),
        ({"transformers_weights": "adapter_model.bin"}, "unknown PTUMConfig key.*transformers_weights"),
        ({"evil": 1, "also_evil": 2}, "unknown PTUMConfig key.*also_evil, evil"),
    ],
)
def test_bad_config_is_refused_before_any_weight_is_read(tmp_path, change, message):
    # model.safetensors is garbage: had the loader opened it, the error would be a safetensors one.
    folder = write_checkpoint(tmp_path / "ckpt", {**tiny_config().to_dict(), **change})
    with pytest.raises(ValueError, match=message):
        PTUMConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(folder)
    for loader in (PTUMModel, PTUMForPretraining, AutoModel):
        with pytest.raises(ValueError, match=message):
            loader.from_pretrained(folder)


def test_garbage_weights_are_reached_with_a_good_config(tmp_path):
    """The control for the test above: with a valid config the loader does open the garbage weights."""
    folder = write_checkpoint(tmp_path / "ckpt", tiny_config().to_dict())
    with pytest.raises(Exception) as caught:
        PTUMModel.from_pretrained(folder)
    assert "safetensors" in type(caught.value).__module__.lower(), repr(caught.value)


def test_unknown_key_in_code_is_refused_too():
    with pytest.raises(ValueError, match="unknown PTUMConfig key.*num_heads"):
        PTUMConfig(num_heads=4)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("behavior_type", ["attention", "pretrained"])
def test_every_model_class_round_trips_its_config(tmp_path, head, behavior_type):
    """Nothing transformers writes into config.json is refused: plain saves, Auto-class maps, dtype, id2label.
    (A MiniLM-based checkpoint round-trips in test_modeling.py::test_pretrained_text_encoder_minilm.)"""
    model = head(tiny_config(behavior_type, freeze_user_model=head is PTUMForCTR))
    model.register_for_auto_classes()
    model.config.id2label, model.config.label2id = {0: "young", 1: "old"}, {"young": 0, "old": 1}
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {"auto_map", "architectures", "transformers_version", "dtype", "id2label"} <= set(saved)
    loaded = head.from_pretrained(tmp_path)
    assert loaded.config.to_json_string() == model.config.to_json_string()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PTUMConfig)
    # Rebuilding from the full dict (every attribute transformers keeps) works as well.
    PTUMConfig(**loaded.config.to_dict())
    PTUMConfig.from_dict(loaded.config.to_dict(), return_unused_kwargs=True)


# ----------------------------------------------------------------------------- remote code


def test_remote_code_never_runs_without_trust_remote_code(tmp_path):
    model = PTUMForDemographicClassification(tiny_config())
    model.register_for_auto_classes()
    model.save_pretrained(tmp_path / "ckpt")
    sentinel = tmp_path / "remote_code_ran"
    for name in ("modeling_ptum.py", "configuration_ptum.py"):
        source = tmp_path / "ckpt" / name
        source.write_text(f"open({str(sentinel)!r}, 'a').write({name!r} + '\\n')\n" + source.read_text())

    # In this process ptum_hf is imported: transformers uses the registered classes, never the repository's files.
    assert type(AutoModel.from_pretrained(tmp_path / "ckpt")) is PTUMModel
    assert not sentinel.exists()

    script = textwrap.dedent(
        f"""
        import json, os, sys
        sys.modules["ptum_hf"] = None  # ptum_hf cannot be imported: only the checkpoint's own code could load it
        from transformers import AutoConfig, AutoModel
        results = {{}}
        for flag, kwargs in (("unset", {{}}), ("false", {{"trust_remote_code": False}})):
            for loader in (AutoConfig, AutoModel):
                try:
                    loader.from_pretrained({str(tmp_path / "ckpt")!r}, **kwargs)
                    results[loader.__name__ + "/" + flag] = "loaded"
                except Exception as error:
                    results[loader.__name__ + "/" + flag] = type(error).__name__ + ": " + str(error)
        results["ran_before_trust"] = os.path.exists({str(sentinel)!r})
        # (AutoConfig rather than AutoModel: the same mechanism, without importing transformers' modeling stack.)
        config = AutoConfig.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        results["trusted_module"] = type(config).__module__
        results["ran_after_trust"] = open({str(sentinel)!r}).read() if os.path.exists({str(sentinel)!r}) else ""
        print("RESULTS=" + json.dumps(results))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = run_python(script, tmp_path, env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULTS=")[-1])
    for key in ("AutoConfig/unset", "AutoModel/unset", "AutoConfig/false", "AutoModel/false"):
        assert results[key].startswith("ValueError") and "trust_remote_code=True" in results[key], results[key]
    assert results["ran_before_trust"] is False
    # The control: the sentinel does fire once the user trusts the repository, so its absence above means something.
    assert results["trusted_module"].startswith("transformers_modules.")
    assert results["ran_after_trust"] == "configuration_ptum.py\n"


# ----------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("bad", [60, 10**6, -1])
def test_out_of_range_token_ids_are_refused_with_a_clear_error(bad):
    model = PTUMModel(tiny_config())
    ids = torch.tensor([[5, 7, 0], [3, bad, 9]])
    with pytest.raises(ValueError, match=rf"token ids in \[0, vocab_size=60\).*: {bad}\b"):
        model.encode_behaviors(ids)
    with pytest.raises(ValueError, match=r"vocab_size=60"):
        PTUMForPretraining(tiny_config())(
            behavior_input_ids=ids,
            mbp_history_indices=torch.tensor([[0, -2]]),
            mbp_candidate_indices=torch.tensor([[0, 1]]),
            mbp_labels=torch.tensor([0]),
        )


def test_token_id_check_names_several_bad_values_and_the_dtype():
    model = PTUMModel(tiny_config())
    with pytest.raises(ValueError, match=r"3 distinct value\(s\) outside it: -5, 60, 61"):
        model.encode_behaviors(torch.tensor([[60, 61, -5, 61]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode_behaviors(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="must be 2-D"):
        model.encode_behaviors(torch.tensor([1, 2, 3]))


# ----------------------------------------------------------------------------- numerical safety


def base_batch(seed=0):
    """8 behaviors of up to 6 tokens, 4 users with 5 slots (user 0 padded after 3), gaps up to ~11 days."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (8, 6), generator=g)
    lengths = torch.tensor([6, 1, 3, 4, 2, 5, 6, 3])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    history = torch.randint(0, 8, (4, 5), generator=g)
    history[0, 3:] = -1
    gaps = torch.rand(4, 5, generator=g) * 1e6
    return ids * mask, mask, history, gaps


def scenario(name):
    ids, mask, history, gaps = base_batch()
    if name == "one_behavior":
        history[:, 1:] = -1
    elif name == "all_padding_rows":
        history[1] = -1
        history[3] = -1
    elif name == "empty_texts":  # texts that tokenise to nothing, used in histories and as candidates
        ids[:4], mask[:4] = 0, 0
    elif name == "all_texts_empty":
        ids[:], mask[:] = 0, 0
    elif name == "huge_time_gaps":
        gaps = torch.tensor(
            [
                [1e30, float("inf"), float("nan"), -1.0, 0.0],
                [-float("inf"), 1e308, 3e9, float("nan"), float("inf")],
                [float("nan")] * 5,
                [float("inf")] * 5,
            ],
            dtype=torch.float64,
        )
    elif name == "extreme_token_ids":
        ids[:3] = 59  # vocab_size - 1, every position
        mask[:3] = 1
        ids[3], mask[3] = 0, 1  # the padding id itself, attended to
    elif name == "everything":  # all of the above in one batch
        ids[:2], mask[:2] = 0, 0  # empty texts
        ids[2:4], mask[2:4] = 59, 1  # vocab_size - 1 at every position
        history[0, 1:] = -1  # a user with one behavior
        history[1] = -1  # a user with none
        gaps = scenario("huge_time_gaps")[3]
    return ids, mask, history, gaps


def run_head(head, model, batch):
    ids, mask, history, gaps = batch
    if head is PTUMForPretraining:
        mbp_history = history.clone()
        mbp_history[:, 0] = -2
        candidates = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 3, -1]])
        return model(
            behavior_input_ids=ids,
            behavior_attention_mask=mask,
            mbp_history_indices=mbp_history,
            mbp_history_time_gaps=gaps,
            mbp_candidate_indices=candidates,
            mbp_labels=torch.tensor([0, 1, 2, 0]),
            nbp_history_indices=history,
            nbp_history_time_gaps=gaps,
            nbp_candidate_indices=torch.stack([candidates, candidates.flip(-1)], 1).clamp(min=0),
            nbp_labels=torch.tensor([[0, 2], [1, 1], [2, 0], [0, -100]]),
        )
    if head is PTUMForDemographicClassification:
        return model(ids, mask, history, gaps, labels=torch.tensor([[0, 1], [3, 0], [2, -100], [1, 1]]))
    return model(
        ids,
        mask,
        history,
        gaps,
        ad_title_indices=torch.tensor([0, 3, 7, 1]),
        ad_description_indices=torch.tensor([2, -1, 0, 3]),
        labels=torch.tensor([1.0, 0.0, 1.0, 0.0]),
    )


def assert_all_finite(head, model, batch, autocast=False):
    model.train().zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = run_head(head, model, batch)
    for key, value in out.items():
        if torch.is_tensor(value):
            assert torch.isfinite(value.float()).all(), f"{head.__name__}.{key} is not finite"
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, f"{head.__name__}: no gradient reached the parameters"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{head.__name__}: non-finite gradients in {bad}"


SCENARIOS = [
    "one_behavior",
    "all_padding_rows",
    "empty_texts",
    "all_texts_empty",
    "huge_time_gaps",
    "extreme_token_ids",
]


@pytest.mark.parametrize("name", SCENARIOS)
def test_hostile_inputs_give_finite_outputs_losses_and_gradients(name):
    batch = scenario(name)
    for behavior_type, user_type in ENCODER_PAIRS:
        config = tiny_config(behavior_type, user_encoder_type=user_type)
        for head in HEADS[1:]:
            torch.manual_seed(0)
            assert_all_finite(head, head(config), batch)


@pytest.mark.parametrize("behavior_type,user_type", ENCODER_PAIRS)
def test_bf16_autocast_gives_finite_outputs_losses_and_gradients(behavior_type, user_type):
    batch = scenario("everything")
    config = tiny_config(behavior_type, user_encoder_type=user_type, dropout=0.1)
    for head in HEADS[1:]:
        torch.manual_seed(0)
        assert_all_finite(head, head(config), batch, autocast=True)
    unshared = tiny_config(behavior_type, user_encoder_type=user_type, share_ad_encoder=False)
    if behavior_type != "pretrained":  # see PTUMForCTR: the unshared ad encoder is a PTUMBehaviorEncoder
        assert_all_finite(PTUMForCTR, PTUMForCTR(unshared), batch, autocast=True)


def test_time_gaps_map_into_the_bucket_table():
    encoder = PTUMModel(tiny_config()).user_encoder
    buckets = encoder.time_buckets(scenario("huge_time_gaps")[3])
    assert buckets.min() >= 0 and buckets.max() < encoder.num_time_buckets
    assert buckets[0, 0] == encoder.num_time_buckets - 1  # 1e30 s: the oldest bucket
    assert buckets[0, 3] == 0 and buckets[0, 2] == 0  # negative and NaN: the newest


def test_no_behavior_user_is_the_zero_vector_under_autocast():
    ids, mask, history, gaps = scenario("everything")
    for user_type in USER_ENCODER_TYPES:
        model = PTUMModel(tiny_config(user_encoder_type=user_type)).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            users = model(ids, mask, history, gaps).user_embeddings
        assert torch.equal(users[1].float(), torch.zeros(16)), user_type


@pytest.mark.parametrize("behavior_type", BEHAVIOR_ENCODER_TYPES)
def test_a_batch_of_users_without_any_behavior(behavior_type):
    """Embedding brand-new users: every history is padding, so the behavior table is empty (M = 0)."""
    ids, mask, history = build_behavior_table(torch.zeros(3, 4, 6, dtype=torch.long))
    assert ids.shape == (0, 6) and (history == -1).all()
    for user_type in USER_ENCODER_TYPES:
        config = tiny_config(behavior_type, user_encoder_type=user_type)
        assert torch.equal(PTUMModel(config)(ids, mask, history).user_embeddings, torch.zeros(3, 16))
        model = PTUMForDemographicClassification(config)
        out = model(ids, mask, history, labels=torch.tensor([[0, 1], [1, 0], [2, 1]]))
        out.loss.backward()
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_what_save_pretrained_writes_loads_back(tmp_path):
    config = tiny_config()
    config.my_note = "for later"  # neither a PTUM field nor a transformers one: refused on load, so refused here
    with pytest.raises(ValueError, match="would not load back.*my_note"):
        config.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()
    good = tiny_config()
    good.id2label = {0: "a", 1: "b"}  # transformers' own attributes stay allowed
    good.save_pretrained(tmp_path / "good")
    assert PTUMConfig.from_pretrained(tmp_path / "good").max_behaviors == good.max_behaviors
