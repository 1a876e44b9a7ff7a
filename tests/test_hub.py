import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
import transformers.utils.hub
from safetensors.torch import load_file

import ptum_hf.hub as hub
from ptum_hf import PTUMForPretraining, PTUMModel
from ptum_hf.hub import push_to_hub, save_for_hub
from ptum_hf.modelcard import PTUMModelCardData

from conftest import tiny_config

SOURCE_DIR = Path(hub.__file__).parent
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "README.md",
    "configuration_ptum.py",
    "modeling_ptum.py",
    "processing_ptum.py",  # inference from raw events (model.encode / predict)
    "pipeline_ptum.py",  # the user-feature-extraction / user-classification pipelines
    "checksums.json",
}


class RecordedHfApi:
    """Stands in for `huggingface_hub.HfApi`: records calls, and the files an upload sends as they were then."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        folder = Path(folder_path)
        self.uploaded = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.folder = folder
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


@pytest.fixture(scope="module")
def config():
    return tiny_config(vocab_size=50, max_behaviors=10, dropout=0.2)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "news": 2, "sports": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def _assert_same_weights(expected: dict, actual: dict):
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


def test_push_sends_exactly_the_checkpoint_files(config):
    model = PTUMForPretraining(config)
    api = RecordedHfApi()
    commit = push_to_hub(model, "org/ptum-tiny", api=api, private=True, commit_message="first")

    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0] == ("create_repo", "org/ptum-tiny", {"exist_ok": True, "private": True})
    assert api.calls[1][2]["commit_message"] == "first"
    assert commit.commit_url.startswith("https://huggingface.co/org/ptum-tiny")
    assert not api.folder.exists()  # the staging folder is cleaned up

    assert set(api.uploaded) == MODEL_FILES
    assert not [name for name in api.uploaded if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    # The source files ship as they are in the package, so remote code runs the same model.
    for name in ("modeling_ptum.py", "configuration_ptum.py"):
        assert api.uploaded[name] == (SOURCE_DIR / name).read_bytes()
    auto_map = json.loads(api.uploaded["config.json"])["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_ptum.PTUMConfig"
    assert auto_map["AutoModel"] == "modeling_ptum.PTUMModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_ptum.PTUMForPretraining"
    readme = api.uploaded["README.md"].decode()
    assert 'from_pretrained("org/ptum-tiny"' in readme
    assert "Not measured" in readme


def test_push_with_tokenizer_and_card_data(config, tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    tokenizer_files = {p.name for p in tmp_path.iterdir()}
    assert "tokenizer.json" in tokenizer_files

    card_data = PTUMModelCardData(language="en")
    api = RecordedHfApi()
    push_to_hub(PTUMModel(config), "org/ptum-encoder", tokenizer=tokenizer, card=card_data, api=api)

    assert set(api.uploaded) == MODEL_FILES | tokenizer_files
    assert 'from_pretrained("org/ptum-encoder"' in api.uploaded["README.md"].decode()
    assert card_data.model_id is None  # the caller's card data is left as it was


def test_a_pushed_tokenizer_names_a_class_transformers_4_and_5_load(config, tokenizer):
    """transformers 5 saves a plain fast tokenizer as `TokenizersBackend`, a class transformers 4 does not have."""
    api = RecordedHfApi()
    push_to_hub(PTUMModel(config), "org/ptum-encoder", tokenizer=tokenizer, api=api)
    assert json.loads(api.uploaded["tokenizer_config.json"])["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_push_builds_an_hf_api_with_the_token(config, monkeypatch):
    made = []

    def fake_hf_api(token=None):
        made.append(token)
        return RecordedHfApi()

    monkeypatch.setattr(hub, "HfApi", fake_hf_api)
    push_to_hub(PTUMModel(config), "org/name", card="# a card", token="hf_secret")
    assert made == ["hf_secret"]


def test_save_for_hub_replaces_a_folder_whole(config, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "pytorch_model.bin").write_bytes(b"stale")

    assert save_for_hub(PTUMModel(config), target) == target
    assert {p.name for p in target.iterdir()} == MODEL_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or backup folder left
    with pytest.raises(FileExistsError):
        save_for_hub(PTUMModel(config), target, overwrite=False)


def test_save_for_hub_never_leaves_a_half_written_folder(config, tmp_path, monkeypatch):
    model = PTUMModel(config)
    target = tmp_path / "ckpt"
    save_for_hub(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        save_for_hub(model, target)
    with pytest.raises(OSError, match="disk full"):
        save_for_hub(model, tmp_path / "new")

    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_pickled_files_are_refused(config, tmp_path):
    class PicklingTokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "vocab.pkl").write_bytes(b"\x80\x04")

    with pytest.raises(RuntimeError, match="pickle"):
        save_for_hub(PTUMModel(config), tmp_path / "ckpt", tokenizer=PicklingTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_loads_from_a_hub_cache_layout_offline(config, tmp_path, monkeypatch):
    model = PTUMModel(config)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--name"
    save_for_hub(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these variables once, at import: set the values it actually uses too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # transformers 4 copies the cache folder at import too (5 reads huggingface_hub's)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)

    loaded = PTUMModel.from_pretrained("org/name")
    _assert_same_weights(model.state_dict(), loaded.state_dict())


def test_remote_code_loads_without_ptum_hf(config, tmp_path):
    model = PTUMForPretraining(config)
    folder = save_for_hub(model, tmp_path / "ckpt")
    out = tmp_path / "loaded.safetensors"
    # A fresh interpreter: once ptum_hf is imported, transformers 5 prefers its registered classes over remote code.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ptum_hf"] = None  # any import of ptum_hf now fails
        from safetensors.torch import save_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__name__ == "PTUMModel", type(model)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        save_file(model.state_dict(), {str(out)!r})
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    # AutoModel maps to the encoder: the pre-training checkpoint's `ptum.` weights, without the heads.
    _assert_same_weights(model.ptum.state_dict(), load_file(out))


def test_saving_for_the_hub_leaves_plain_saves_unchanged(config, tmp_path):
    model = PTUMForPretraining(config)
    save_for_hub(model, tmp_path / "hub")
    model.save_pretrained(tmp_path / "plain")
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"config.json", "model.safetensors"}
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
