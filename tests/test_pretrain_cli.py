"""`ptum-hf pretrain` as a user types it: the log as first argument (a file or a glob), `--size`, `--help` with every
default, `--streaming` for a log larger than memory (resumed exactly), and the trackers of `--report_to`."""

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ptum_hf import cli
from ptum_hf.configuration_ptum import RECIPES, SIZE_PRESETS, PTUMConfig
from ptum_hf.data import load_behavior_dataset
from ptum_hf.pretraining import PretrainingArguments, build_config
from ptum_hf.tracking import CSVTracker, build_tracker

from conftest import ddp_pretrain_command, logged, subprocess_env

USERS = 200


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A synthetic log as one CSV file and as two Parquet files (users grouped), and a labels-free glob of them."""
    folder = tmp_path_factory.mktemp("logs")
    data = load_behavior_dataset("synthetic", num_users=USERS, seed=3)
    rows = [
        (user["user_id"], time, data.behaviors[behavior])
        for user in data.users
        for behavior, time in zip(user["behavior_ids"], user["timestamps"])
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "timestamp", "text"])
    frame.to_csv(folder / "log.csv", index=False)
    first = frame.user_id.isin(frame.user_id.unique()[: USERS // 2])
    frame[first].to_parquet(folder / "part0.parquet")
    frame[~first].to_parquet(folder / "part1.parquet")
    return folder


@pytest.fixture
def parsed(monkeypatch):
    """The arguments `ptum-hf pretrain` would train with (the run itself is replaced)."""
    seen = []
    monkeypatch.setattr("ptum_hf.pretraining.pretrain", lambda args, card_data=None: seen.append(args) or "model")
    return seen


TINY_FLAGS = ["--per_device_batch_size", "16", "--tokenizer_vocab_size", "500", "--size", "tiny"]


# -- the log as first argument ---------------------------------------------------------------------------------------
def test_first_argument_is_the_log(parsed, tmp_path):
    cli.main(["pretrain", "logs/*.parquet", "--output_dir", str(tmp_path), "--size", "small"])
    assert parsed[0].dataset == "logs/*.parquet" and parsed[0].size == "small"
    cli.main(["pretrain", "--dataset", "log.csv", "--output_dir", str(tmp_path)])
    assert parsed[1].dataset == "log.csv"
    arguments = tmp_path / "run.yaml"  # alone, a YAML/JSON file holds the arguments, not the log
    arguments.write_text(f"dataset: other.csv\noutput_dir: {tmp_path}\nsize: tiny\n")
    cli.main(["pretrain", str(arguments)])
    assert (parsed[2].dataset, parsed[2].size) == ("other.csv", "tiny")


def test_two_logs_are_refused(parsed, tmp_path):
    with pytest.raises(SystemExit, match="two logs given"):
        cli.main(["pretrain", "a.csv", "--dataset", "b.csv", "--output_dir", str(tmp_path)])
    assert not parsed


def test_pretrain_on_a_csv_log_given_first_at_a_size(logs, tmp_path, one_thread):
    out = tmp_path / "run"
    cli.main(["pretrain", str(logs / "log.csv"), "--output_dir", str(out), *TINY_FLAGS, "--max_steps", "2"])
    config = json.loads((out / "model" / "config.json").read_text())
    assert {key: config[key] for key in SIZE_PRESETS["tiny"]} == SIZE_PRESETS["tiny"]
    card = (out / "model" / "README.md").read_text()
    assert "log.csv" in card


# -- sizes -----------------------------------------------------------------------------------------------------------
def test_size_presets_are_one_table():
    from ptum_hf.reproduce.settings import Settings

    for size in SIZE_PRESETS:  # the experiment runner's sizes are the library's
        assert Settings(size=size).model_overrides == SIZE_PRESETS[size]


@pytest.mark.parametrize("size", list(SIZE_PRESETS))
def test_size_then_overrides(size):
    args = PretrainingArguments(size=size, preset="han", config_overrides='{"max_behaviors": 7}')
    config = build_config(args, vocab_size=100, pad_token_id=0)
    expected = {**PTUMConfig().to_dict(), **SIZE_PRESETS[size], "max_behaviors": 7}  # the overrides win
    assert {key: getattr(config, key) for key in SIZE_PRESETS["small"]} == {
        k: expected[k] for k in SIZE_PRESETS["small"]
    }
    assert (config.behavior_encoder_type, config.user_encoder_type) == ("lstm", "attention")  # the preset's


# -- recipes ---------------------------------------------------------------------------------------------------------
def test_recipes_are_one_table_between_size_and_overrides():
    from ptum_hf.reproduce.settings import Settings

    assert RECIPES["paper"] == {}  # the paper's recipe is the config's defaults
    for recipe in RECIPES:  # the experiment runner's recipes are the library's
        assert Settings(recipe=recipe).model_overrides == {**SIZE_PRESETS["small"], **RECIPES[recipe]}
    assert "[items recipe: bag prediction, ids, attention pooling]" in Settings(recipe="items").model_label("hsa")
    args = PretrainingArguments(size="small", recipe="items", config_overrides='{"dropout": 0.1}')
    config = build_config(args, vocab_size=100, pad_token_id=0)
    assert (config.use_bag, config.use_mbp, config.use_nbp) == (True, False, False)
    assert config.behavior_id_buckets > 0 and config.user_encoder_type == "attention"  # wins over hsa's
    assert config.max_behaviors == RECIPES["items"]["max_behaviors"]  # wins over the size's 50
    assert config.dropout == 0.1 and config.hidden_size == SIZE_PRESETS["small"]["hidden_size"]  # overrides win


def test_pretrain_with_the_items_recipe_then_embed(logs, tmp_path, one_thread):
    out = tmp_path / "run"
    flags = [*TINY_FLAGS, "--recipe", "items", "--report_to", "csv", "--logging_steps", "1", "--max_steps", "3"]
    cli.main(["pretrain", str(logs / "log.csv"), "--output_dir", str(out), *flags])
    config = json.loads((out / "model" / "config.json").read_text())
    assert {key: config[key] for key in RECIPES["items"]} == RECIPES["items"]
    logged = {line.split(",")[1] for line in (out / "logs" / "metrics.csv").read_text().splitlines()[1:]}
    assert "bag_loss" in logged and "mbp_loss" not in logged  # the recipe's objective is what trained
    vectors = tmp_path / "vectors.parquet"
    cli.main(
        [
            "embed",
            "--model_name_or_path",
            str(out / "model"),
            "--dataset",
            str(logs / "log.csv"),
            "--output_file",
            str(vectors),
        ]
    )
    assert len(pd.read_parquet(vectors)) == USERS


@pytest.mark.parametrize(
    "field, value, allowed", [("size", "huge", "paper, small, tiny"), ("recipe", "bag", "paper, items")]
)
def test_unknown_size_or_recipe_is_refused(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field} must be one of {allowed}; got '{value}'"):
        PretrainingArguments(**{field: value})
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; allowed: {allowed}"):
        PTUMConfig.from_preset("hsa", **{field: value})
    from ptum_hf.reproduce.settings import Settings

    with pytest.raises(ValueError, match=f"{field} must be one of {allowed}; got '{value}'"):
        Settings(**{field: value})
    with pytest.raises(SystemExit) as error:
        cli.main(["pretrain", f"--{field}", value])
    assert error.value.code == 2


# -- help --------------------------------------------------------------------------------------------------------
def test_pretrain_help_shows_every_default_and_a_help_text(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["pretrain", "--help"])
    assert error.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ptum-hf pretrain [LOG]")
    options = out.split("\noptions:\n")[1]
    blocks = re.split(r"\n  (?=--)", options)[1:]  # one block per option
    for field in dataclasses.fields(PretrainingArguments):
        assert field.metadata.get("help"), f"--{field.name} has no help text"
        block = next(b for b in blocks if b.startswith(f"--{field.name} ") or b.startswith(f"--{field.name}\n"))
        assert f"(default: {field.default})" in " ".join(block.split()), block


def test_main_help_lists_the_commands_and_exits_0(capsys):
    assert cli.main(["--help"]) is None
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert re.search(rf"^  {name} +\S", out, re.M), f"{name} has no line in ptum-hf --help"
    done = subprocess.run([sys.executable, "-m", "ptum_hf.cli", "--help"], capture_output=True, env=subprocess_env())
    assert done.returncode == 0 and b"commands:" in done.stdout


def test_no_or_unknown_command_fails(capsys):
    for argv in ([], ["pretrian"]):
        with pytest.raises(SystemExit) as error:
            cli.main(argv)
        assert error.value.code not in (0, None)
    assert "unknown command 'pretrian'" in str(error.value)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_usage_line_names_the_command(command, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main([command, "--help"])
    assert error.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ptum-hf {command}")


# -- streaming -------------------------------------------------------------------------------------------------------
STREAM_RUN = [*TINY_FLAGS, "--streaming", "--max_steps", "20", "--save_steps", "4", "--save_total_limit", "10"]
STREAM_RUN += ["--eval_steps", "6", "--logging_steps", "1", "--report_to", "csv", "--deterministic", "true"]


def test_streaming_pretrain_resumes_exactly(logs, tmp_path, one_thread, capsys):
    """190 training users in batches of 16: 20 steps cross the end of the log; resumed at step 8, the run replays
    the stream to its position and ends with the uninterrupted run's weights and metrics."""
    glob = str(logs / "part*.parquet")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    cli.main(["pretrain", glob, "--output_dir", str(whole), *STREAM_RUN])
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == [f"step_{s}" for s in (12, 16, 20, 4, 8)]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "step_8", resumed / "checkpoints" / "step_8")
    capsys.readouterr()
    cli.main(["pretrain", glob, "--output_dir", str(resumed), *STREAM_RUN, "--resume_from_checkpoint", "latest"])
    assert "resumed from" in capsys.readouterr().out

    a, b = load_file(whole / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((run / "model" / "pretraining_metrics.json").read_text()) for run in (whole, resumed)]
    assert metrics[0] == metrics[1] and metrics[0]["step"] == 20
    curve, again = logged(whole), logged(resumed)
    assert sorted(again) == list(range(9, 21)) and all(again[s] == curve[s] for s in again)
    assert logged(whole, "eval_loss")[18] == logged(resumed, "eval_loss")[18]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="two CPU processes through torchrun")
def test_streaming_under_accelerate_launch_resumes_exactly(logs, tmp_path):
    """Two processes (`accelerate launch`), each reading its own Parquet file (Accelerate shards the stream by
    file): the run and a run resumed from its step-8 checkpoint end with the same weights."""
    flags = ["--dataset", str(logs / "part*.parquet"), *TINY_FLAGS, "--streaming", "--max_steps", "14"]
    flags += ["--save_steps", "4", "--save_total_limit", "10", "--report_to", "none"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for output_dir, extra in ((whole, []), (resumed, ["--resume_from_checkpoint", "latest"])):
        if extra:
            shutil.copytree(whole / "checkpoints" / "step_8", resumed / "checkpoints" / "step_8")
        command = ddp_pretrain_command(output_dir, *flags, *extra, "--deterministic", "true")
        done = subprocess.run(command, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    a, b = load_file(whole / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_needs_max_steps_and_a_log(tmp_path):
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        PretrainingArguments(output_dir=str(tmp_path), streaming=True)
    with pytest.raises(ValueError, match="movielens-100k fits in memory"):
        cli.main(["pretrain", "movielens-100k", "--streaming", "--max_steps", "2", "--output_dir", str(tmp_path)])


# -- trackers --------------------------------------------------------------------------------------------------------
def test_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match="report_to must name trackers among auto, all, csv, none, .*wandb"):
        PretrainingArguments(report_to="tensorbord")
    with pytest.raises(ValueError, match="stand alone"):
        PretrainingArguments(report_to="none,csv")


@pytest.mark.parametrize("name", ["wandb", "mlflow", "comet_ml", "clearml", "dvclive", "aim"])
def test_tracker_not_installed_names_its_package(name, tmp_path):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed")
    package = {"comet_ml": "comet-ml"}.get(name, name)
    PretrainingArguments(report_to=f"csv,{name}")  # a known name: accepted until the run starts
    with pytest.raises(ValueError, match=f"report_to={name} but {package} is not installed: pip install {package}"):
        build_tracker(f"csv,{name}", tmp_path)


def test_csv_all_auto_and_none(tmp_path):
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert build_tracker("none", tmp_path) is None
    (csv_tracker,) = build_tracker("csv", tmp_path)
    assert isinstance(csv_tracker, CSVTracker)
    (auto,) = build_tracker("auto", tmp_path)
    assert auto == "tensorboard" if has_tensorboard else isinstance(auto, CSVTracker)
    everything = build_tracker("all", tmp_path)
    assert isinstance(everything[-1], CSVTracker) and ("tensorboard" in everything) == has_tensorboard


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_and_csv_together(logs, tmp_path, one_thread):
    cli.main(
        ["pretrain", str(logs / "log.csv"), "--output_dir", str(tmp_path / "tb"), *TINY_FLAGS, "--max_steps", "2"]
        + ["--report_to", "tensorboard,csv", "--logging_steps", "1"]
    )
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*")) and logged(tmp_path / "tb")
