"""What loading a checkpoint trusts (issue 18, item 4): sharded indexes that point outside the checkpoint, configs of
another model type, absurd sizes, weights changed after saving, and the permissions of saved weights.

See SECURITY.md for the guarantees and their limits.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers.utils.hub
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

import ptum_hf.modeling_ptum as modeling_ptum
from ptum_hf import PTUMConfig, PTUMForPretraining, PTUMModel
from ptum_hf.configuration_ptum import MAX_LABEL_CLASSES, SIZE_LIMITS
from ptum_hf.hub import save_for_hub, write_checkpoint
from ptum_hf.modeling_ptum import CHECKSUMS_NAME, write_checksums

from conftest import tiny_config

INDEX = "model.safetensors.index.json"
SHARD_SIZE = "5KB"  # splits the tiny model into a few shards
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_weights(expected: dict, actual: dict):
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


def sharded_checkpoint(folder: Path) -> tuple[PTUMModel, dict]:
    model = PTUMModel(tiny_config())
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    index = json.loads((folder / INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    return model, index


def point_shard_at(folder: Path, index: dict, shard: str, entry: str):
    """Rewrite the index so that every weight of `shard` is read from `entry` instead."""
    index["weight_map"] = {key: entry if value == shard else value for key, value in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache under tmp_path, offline; returns a function that makes a repository's snapshot folder."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # transformers 4.x copies the cache folder into its own constant when imported
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(cache), raising=False)

    def snapshot(repo_id: str) -> Path:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REVISION)
        return repo / "snapshots" / REVISION

    return snapshot


# ----------------------------------------------------------------------------- 1. sharded indexes


def test_sharded_checkpoint_loads(tmp_path):
    """The control for the refusals below: an untouched sharded checkpoint loads, weight for weight."""
    model, _ = sharded_checkpoint(tmp_path / "ckpt")
    assert_same_weights(model.state_dict(), PTUMModel.from_pretrained(tmp_path / "ckpt").state_dict())


def test_an_index_entry_outside_the_folder_is_read_without_the_check(tmp_path, monkeypatch):
    """Why the check exists: transformers joins each weight_map entry to the folder as it is, and follows `..`."""
    folder = tmp_path / "ckpt"
    model, index = sharded_checkpoint(folder)
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = {name: torch.full_like(tensor, 7.0) for name, tensor in load_file(folder / shard).items()}
    save_file(outside, tmp_path / "outside.safetensors")
    (folder / shard).unlink()
    point_shard_at(folder, index, shard, "../outside.safetensors")

    monkeypatch.setattr(modeling_ptum, "_check_checkpoint_files", lambda *args, **kwargs: None)
    loaded = PTUMModel.from_pretrained(folder).state_dict()
    for name, tensor in outside.items():
        assert torch.equal(loaded[name], tensor), name  # read from tmp_path/outside.safetensors


@pytest.mark.parametrize(
    "entry",
    [
        "../outside.safetensors",
        "ABSOLUTE",  # replaced by an absolute path to a real file
        "sub/model-00001.safetensors",
        "..\\outside.safetensors",
        "C:outside.safetensors",
        "..",
        "",
        7,
    ],
)
@pytest.mark.parametrize("loader", [PTUMModel, AutoModel])
def test_index_entries_that_are_not_plain_file_names_are_refused(tmp_path, entry, loader):
    folder = tmp_path / "ckpt"
    _, index = sharded_checkpoint(folder)
    shard = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(folder / shard, tmp_path / "outside.safetensors")
    (folder / "sub").mkdir()
    shutil.copy(folder / shard, folder / "sub" / "model-00001.safetensors")
    if entry == "ABSOLUTE":
        entry = str(tmp_path / "outside.safetensors")
    point_shard_at(folder, index, shard, entry)
    with pytest.raises(OSError) as caught:
        loader.from_pretrained(folder)
    message = str(caught.value)
    assert "refusing the sharded-checkpoint index" in message and str(folder / INDEX) in message
    assert repr(entry) in message and "not a plain file name" in message
    key = next(key for key, value in index["weight_map"].items() if value == entry)
    assert repr(key) in message


def test_a_shard_symlinked_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    _, index = sharded_checkpoint(folder)
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).rename(tmp_path / "elsewhere.safetensors")
    (folder / shard).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(OSError, match=rf"{shard!r} is a symlink to .*elsewhere\.safetensors.*outside the checkpoint"):
        PTUMModel.from_pretrained(folder)


def test_a_shard_symlinked_inside_the_folder_loads(tmp_path):
    folder = tmp_path / "ckpt"
    model, index = sharded_checkpoint(folder)
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / "data").mkdir()
    (folder / shard).rename(folder / "data" / "kept.safetensors")
    (folder / shard).symlink_to(Path("data") / "kept.safetensors")
    assert_same_weights(model.state_dict(), PTUMModel.from_pretrained(folder).state_dict())


def test_the_hub_cache_layout_with_symlinks_to_blobs_loads(tmp_path, offline_hub):
    """The Hub cache keeps files in `blobs/` and links them from `snapshots/<commit>/`: that is not leaving the folder,
    whether the repository is loaded by id or its snapshot folder by path."""
    model, _ = sharded_checkpoint(tmp_path / "staging")
    snapshot = offline_hub("org/sharded")
    blobs = snapshot.parents[1] / "blobs"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in (tmp_path / "staging").iterdir():
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    assert_same_weights(model.state_dict(), PTUMModel.from_pretrained("org/sharded").state_dict())
    assert_same_weights(model.state_dict(), PTUMModel.from_pretrained(snapshot).state_dict())


@pytest.mark.parametrize("entry", ["../../../../outside.safetensors", "ABSOLUTE"])
def test_hub_index_entries_outside_the_snapshot_are_refused(tmp_path, offline_hub, entry):
    snapshot = offline_hub("stranger/sharded")
    _, index = sharded_checkpoint(snapshot)
    shard = sorted(set(index["weight_map"].values()))[0]
    (snapshot / shard).rename(tmp_path / "outside.safetensors")
    entry = str(tmp_path / "outside.safetensors") if entry == "ABSOLUTE" else entry
    point_shard_at(snapshot, index, shard, entry)
    for kwargs in ({}, {"revision": REVISION}):
        with pytest.raises(OSError, match=rf"refusing the sharded-checkpoint index .*{INDEX}.*not a plain file name"):
            PTUMModel.from_pretrained("stranger/sharded", **kwargs)


def test_a_pickle_index_is_checked_when_pickle_weights_are_opted_in(tmp_path):
    folder = tmp_path / "ckpt"
    PTUMModel(tiny_config()).config.save_pretrained(folder)
    index = {"metadata": {}, "weight_map": {"mask_embedding": "../../home/someone/weights.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(OSError, match=r"pytorch_model\.bin\.index\.json.*'mask_embedding'.*not a plain file name"):
        PTUMModel.from_pretrained(folder, use_safetensors=False)


@pytest.mark.parametrize("content", ["not json", "[]", '{"weight_map": ["model.safetensors"]}'])
def test_a_malformed_index_is_refused_by_name(tmp_path, content):
    folder = tmp_path / "ckpt"
    sharded_checkpoint(folder)
    (folder / INDEX).write_text(content)
    with pytest.raises(OSError, match=rf"sharded-checkpoint index .*{INDEX}"):
        PTUMModel.from_pretrained(folder)


# ----------------------------------------------------------------------------- 2. model_type


def config_folder(folder: Path, **changes) -> Path:
    """A checkpoint folder whose config.json is a PTUM config with `changes` (None removes a key)."""
    model = PTUMModel(tiny_config())
    model.save_pretrained(folder)
    config = {**json.loads((folder / "config.json").read_text()), **changes}
    config = {key: value for key, value in config.items() if value is not None}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("model_type", ["bert", "evil_unknown", None])
def test_a_config_of_another_model_type_is_refused(tmp_path, model_type):
    folder = config_folder(tmp_path / "ckpt", model_type=model_type)
    found = "has no model_type" if model_type is None else f"has model_type {model_type!r}"
    message = rf"{str(folder / 'config.json')!r} {found}: PTUM classes load only configs of model_type 'ptum'"
    for load in (PTUMConfig.from_pretrained, PTUMModel.from_pretrained, PTUMForPretraining.from_pretrained):
        with pytest.raises(ValueError, match=message):
            load(folder)
    with pytest.raises(ValueError, match=message):
        PTUMConfig.from_pretrained(folder / "config.json")  # a config file given directly


def test_a_config_of_another_model_type_is_refused_from_a_dict_too():
    config = tiny_config().to_dict()
    with pytest.raises(ValueError, match="the config has model_type 'bert': PTUM classes load only"):
        PTUMConfig.from_dict({**config, "model_type": "bert"})
    with pytest.raises(ValueError, match="model_type 'bert'"):
        PTUMConfig(model_type="bert")
    assert PTUMConfig.from_dict(config).model_type == "ptum"


def test_a_hub_config_of_another_model_type_names_the_repository(offline_hub):
    config_folder(offline_hub("stranger/bert"), model_type="bert")
    with pytest.raises(ValueError, match="config.json of the Hub repository 'stranger/bert' has model_type 'bert'"):
        PTUMModel.from_pretrained("stranger/bert")


def test_remote_code_config_refuses_another_model_type(tmp_path):
    """AutoConfig with trust_remote_code and without ptum_hf goes through the checkpoint's own PTUMConfig."""
    model = PTUMModel(tiny_config())
    model.register_for_auto_classes()
    for model_type in ("evil_unknown", "bert", "ptum"):
        model.save_pretrained(tmp_path / model_type)
        config = json.loads((tmp_path / model_type / "config.json").read_text())
        (tmp_path / model_type / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["ptum_hf"] = None
        from transformers import AutoConfig
        results = {{}}
        for model_type in ("evil_unknown", "bert", "ptum"):
            try:
                config = AutoConfig.from_pretrained({str(tmp_path)!r} + "/" + model_type, trust_remote_code=True)
                results[model_type] = "loaded " + type(config).__module__ + "." + type(config).__name__
            except Exception as error:
                results[model_type] = type(error).__name__ + ": " + str(error)
        print("RESULTS=" + json.dumps(results))
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULTS=")[-1])
    for model_type in ("evil_unknown", "bert"):
        assert results[model_type].startswith("ValueError: "), results[model_type]
        assert f"config.json' has model_type {model_type!r}: PTUM classes load only" in results[model_type]
    assert results["ptum"].startswith("loaded transformers_modules."), results["ptum"]  # the control


# ----------------------------------------------------------------------------- 3. size bounds


@pytest.mark.parametrize("name", sorted(SIZE_LIMITS))
def test_every_size_field_has_an_upper_bound_that_names_it(name):
    limit = SIZE_LIMITS[name]
    too_big = limit + 2 if name == "cnn_kernel_size" else limit + 1  # the kernel size must also be odd
    with pytest.raises(ValueError, match=rf"^{name} must be at most {limit} \(PTUMConfig's upper bound\), got "):
        tiny_config(**{name: too_big})
    if name != "num_attention_heads":  # at the bound itself, heads must still divide hidden_size
        assert getattr(tiny_config(**{name: limit}), name) == limit


def test_label_classes_have_an_upper_bound():
    message = rf"label_heads\['age'\] \(number of classes\) must be at most {MAX_LABEL_CLASSES}"
    with pytest.raises(ValueError, match=message):
        tiny_config(label_heads={"age": MAX_LABEL_CLASSES + 1})
    with pytest.raises(ValueError, match="label_heads must have at most 1000 heads"):
        tiny_config(label_heads={f"head{i}": 2 for i in range(1001)})


@pytest.mark.parametrize("loader", [PTUMModel, AutoModel, PTUMConfig, AutoConfig])
def test_an_absurd_size_fails_before_a_model_is_built(tmp_path, monkeypatch, loader):
    folder = config_folder(tmp_path / "ckpt", hidden_size=10_000_000)
    built = []
    original = modeling_ptum.PTUMPreTrainedModel.__init__

    def recording_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_ptum.PTUMPreTrainedModel, "__init__", recording_init)
    message = r"^hidden_size must be at most 65536 \(PTUMConfig's upper bound\), got 10000000"
    with pytest.raises(ValueError, match=message):
        loader.from_pretrained(folder)
    assert built == []


# ----------------------------------------------------------------------------- 4. checksums


def flip_payload_byte(path: Path):
    """Change one byte of tensor data (not the header): the file stays a valid safetensors file."""
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01  # the lowest mantissa byte of the last float32
    path.write_bytes(bytes(data))


def test_save_for_hub_records_the_sha256_of_the_weights(tmp_path):
    model = PTUMModel(tiny_config())
    folder = save_for_hub(model, tmp_path / "ckpt")
    manifest = json.loads((folder / CHECKSUMS_NAME).read_text())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert manifest == {
        "format": "ptum-checksums",
        "version": 1,
        "algorithm": "sha256",
        "files": {"model.safetensors": digest},
    }
    assert_same_weights(model.state_dict(), PTUMModel.from_pretrained(folder).state_dict())
    (tmp_path / "listed").mkdir()
    assert CHECKSUMS_NAME in write_checkpoint(model, tmp_path / "listed")  # among the files it says it wrote


def test_flipped_payload_bytes_are_refused_naming_the_file(tmp_path):
    model = PTUMModel(tiny_config())
    folder = save_for_hub(model, tmp_path / "ckpt")
    flip_payload_byte(folder / "model.safetensors")
    for loader in (PTUMModel, AutoModel):
        with pytest.raises(OSError) as caught:
            loader.from_pretrained(folder)
        message = str(caught.value)
        assert f"{str(folder / 'model.safetensors')!r} does not match the sha256 recorded in" in message
        assert CHECKSUMS_NAME in message
    # The control: without the manifest the same file loads without a word, and its weights differ.
    (folder / CHECKSUMS_NAME).unlink()
    loaded = PTUMModel.from_pretrained(folder).state_dict()
    assert any(not torch.equal(tensor, loaded[name]) for name, tensor in model.state_dict().items())


def test_every_shard_and_the_index_are_verified(tmp_path):
    folder = tmp_path / "ckpt"
    _, index = sharded_checkpoint(folder)
    write_checksums(folder)
    shards = sorted(set(index["weight_map"].values()))
    assert set(json.loads((folder / CHECKSUMS_NAME).read_text())["files"]) == {INDEX, *shards}
    PTUMModel.from_pretrained(folder)
    flip_payload_byte(folder / shards[1])
    with pytest.raises(OSError, match=rf"{shards[1]}' does not match the sha256"):
        PTUMModel.from_pretrained(folder)


def test_weights_the_manifest_does_not_list_are_refused(tmp_path):
    folder = save_for_hub(PTUMModel(tiny_config()), tmp_path / "ckpt")
    (folder / CHECKSUMS_NAME).write_text(
        json.dumps({"format": "ptum-checksums", "version": 1, "algorithm": "sha256", "files": {}})
    )
    with pytest.raises(OSError, match=r"model\.safetensors' is not listed in .*checksums\.json.*stale"):
        PTUMModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        '{"files": {"model.safetensors": "00"}}',
        '{"format": "ptum-checksums", "algorithm": "md5", "files": {}}',
        '{"format": "ptum-checksums", "algorithm": "sha256", "files": {"../model.safetensors": "' + "0" * 64 + '"}}',
    ],
)
def test_a_malformed_manifest_is_refused_by_name(tmp_path, manifest):
    folder = save_for_hub(PTUMModel(tiny_config()), tmp_path / "ckpt")
    (folder / CHECKSUMS_NAME).write_text(manifest)
    with pytest.raises(OSError, match="checksum manifest .*checksums.json"):
        PTUMModel.from_pretrained(folder)


def test_checkpoints_without_a_manifest_still_load(tmp_path):
    model = PTUMForPretraining(tiny_config())
    model.save_pretrained(tmp_path / "plain")  # as the Trainer saves its checkpoints
    assert not (tmp_path / "plain" / CHECKSUMS_NAME).exists()
    assert_same_weights(model.state_dict(), PTUMForPretraining.from_pretrained(tmp_path / "plain").state_dict())


def test_saving_over_a_checkpoint_rewrites_its_manifest(tmp_path):
    folder = save_for_hub(PTUMModel(tiny_config()), tmp_path / "ckpt")
    other = PTUMModel(tiny_config())
    torch.nn.init.constant_(other.mask_embedding, 3.0)
    other.save_pretrained(folder)
    assert_same_weights(other.state_dict(), PTUMModel.from_pretrained(folder).state_dict())
    other.save_pretrained(folder, max_shard_size=SHARD_SIZE)  # now sharded: the manifest lists the shards
    assert INDEX in json.loads((folder / CHECKSUMS_NAME).read_text())["files"]
    assert_same_weights(other.state_dict(), PTUMModel.from_pretrained(folder).state_dict())


# ----------------------------------------------------------------------------- 5. permissions


def modes(folder: Path) -> dict:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir() if path.is_file()}


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("shard", [None, SHARD_SIZE])
def test_saved_weights_have_the_permissions_of_every_other_file(tmp_path, umask, shard):
    model = PTUMModel(tiny_config())
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path / "plain", **kwargs)
    assert set(modes(tmp_path / "plain").values()) == {0o666 & ~umask}, modes(tmp_path / "plain")
    hub = modes(save_for_hub(model, tmp_path / "hub"))
    # The source files are copied with their installed mode (shutil.copy); every file written here follows the umask.
    written = {name: mode for name, mode in hub.items() if not name.endswith(".py")}
    assert set(written.values()) == {0o666 & ~umask}, hub
    if umask == 0o022:
        assert set(hub.values()) == {0o644}, hub
