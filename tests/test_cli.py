"""The README's "your own log and labels" flow through the `ptum-hf` command: pre-train on a CSV log, fine-tune on a
labels CSV (any column name, any class names), embed; and what `--help` tells about it."""

import csv
import json
import random
import shlex
from pathlib import Path

import pandas as pd
import pytest

from ptum_hf.cli import main as cli

from conftest import TINY

PLANS = {"free": ["coupon code", "free trial"], "pro": ["api docs", "invoice export"], "team": ["sso setup", "audit"]}
USERS = 90


def write_log_and_labels(folder):
    """`logs.csv` (user_id, timestamp, text) and `labels.csv` (user_id, plan): every 10th user has no label and one
    labels row belongs to a user without events."""
    rng = random.Random(0)
    with open(folder / "logs.csv", "w", newline="") as log, open(folder / "labels.csv", "w", newline="") as labels:
        events, plans = csv.writer(log), csv.writer(labels)
        events.writerow(["user_id", "timestamp", "text"])
        plans.writerow(["user_id", "plan"])
        for user in range(USERS):
            plan = list(PLANS)[user % 3]
            for event in range(rng.randint(3, 8)):
                text = f"{rng.choice(PLANS[plan])} {rng.choice(['page', 'search', 'click'])}"
                events.writerow([f"u{user}", 1_700_000_000 + 1000 * user + 60 * event, text])
            if user % 10 != 9:
                plans.writerow([f"u{user}", plan])
        plans.writerow(["nobody", "pro"])


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(after: str) -> list[list[str]]:
    """The `ptum-hf` commands of the first bash block after the text `after`, as argument lists."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(after) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[1:] for line in block.replace("\\\n", " ").splitlines() if line.startswith("ptum-hf ")]


def test_own_log_and_labels_pretrain_finetune_embed_as_the_readme_shows(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    write_log_and_labels(tmp_path)
    pretrain, finetune, embed = readme_commands("Your own log and labels")
    assert [pretrain[0], finetune[:2], embed[0]] == ["pretrain", ["finetune", "demographics"], "embed"]
    cli([*pretrain, "--num_epochs", "1", "--config_overrides", json.dumps(TINY), "--tokenizer_vocab_size", "300"])
    capfd.readouterr()
    cli([*finetune, "--num_train_epochs", "2"])
    err = capfd.readouterr().err
    assert "label 'plan': 81 users labeled (free: 27, pro: 27, team: 27); 9 without a label" in err
    assert "has no PTUMForDemographicClassification head: the head (classifier, norm) is freshly initialised" in err
    assert "MISSING" not in err and "Writing model shards" not in err
    out = "outputs/finetune-demographics"
    assert f"model saved to {out}/model; validation and test metrics in {out}/all_results.json" in err

    out = tmp_path / out
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["test_plan_accuracy"] <= 1.0 and 0.0 <= results["eval_plan_macro_f1"] <= 1.0
    assert results["fitted_start_kept"] is False  # --keep_fitted_start is off by default
    assert json.loads((out / "test_results.json").read_text()).keys() == {k for k in results if k.startswith("test_")}
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["label_heads"] == {"plan": 3} and config["label_names"] == {"plan": ["free", "pro", "team"]}
    assert config["id2label"] == {"0": "free", "1": "pro", "2": "team"}

    cli(embed)
    cli(["embed", "--model_name_or_path", str(out / "model"), "--dataset", "logs.csv", "--output_file", "ft.parquet"])
    for path in (embed[embed.index("--output_file") + 1], "ft.parquet"):
        users = pd.read_parquet(tmp_path / path)
        assert sorted(users["user_id"]) == sorted(f"u{i}" for i in range(USERS))
        assert {len(vector) for vector in users["embedding"]} == {TINY["hidden_size"]}


def test_finetune_every_label_column_by_default_and_without_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_log_and_labels(tmp_path)
    frame = pd.read_csv("labels.csv").assign(tier=lambda f: [i % 2 + 1 for i in range(len(f))])  # integer classes
    frame.to_csv("labels.csv", index=False)
    cli(
        ["finetune", "demographics", "--dataset", "logs.csv", "--labels", "labels.csv", "--num_train_epochs", "1"]
        + ["--config_overrides", json.dumps(TINY), "--tokenizer_vocab_size", "300", "--output_dir", "out"]
    )
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["label_names"] == {"plan": ["free", "pro", "team"], "tier": [1, 2]}
    assert {"test_plan_accuracy", "test_tier_accuracy"} <= set(
        json.loads((tmp_path / "out" / "all_results.json").read_text())
    )


def test_finetune_labels_errors_name_what_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_log_and_labels(tmp_path)
    base = ["finetune", "demographics", "--dataset", "logs.csv", "--labels", "labels.csv", "--output_dir", "out"]
    with pytest.raises(ValueError, match=r"missing column\(s\) 'occupation'; the file has 'user_id', 'plan'"):
        cli([*base, "--label_heads", "occupation"])
    with pytest.raises(ValueError, match="'synthetic' is a built-in source with labels of its own"):
        cli(["finetune", "demographics", "--labels", "labels.csv", "--output_dir", "out"])
    with pytest.raises(
        ValueError, match=r"label column\(s\) \['age', 'gender'\] not in the dataset; it has \[\].*--labels"
    ):
        cli(["finetune", "demographics", "--dataset", "logs.csv", "--output_dir", "out"])


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["finetune", "--help"], "usage: ptum-hf finetune {demographics,ctr} "),
        (["finetune", "demographics", "--help"], "usage: ptum-hf finetune demographics "),
        (["finetune", "ctr", "-h"], "usage: ptum-hf finetune ctr "),
    ],
)
def test_finetune_help_names_the_command_and_shows_the_defaults_it_applies(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith(usage)
    assert "The initial learning rate for the optimizer. (default: 0.001)" in text  # not transformers' 5e-05
    assert "Total number of training epochs to perform. (default: 5)" in text  # not 3
    assert "--labels LABELS A labels table for a behavior log" in text
    assert "--dataset DATASET A built-in source (synthetic, movielens-100k, mind) or a behavior log path/glob." in text
    metric = {"ctr": "auc", "demographics": "macro_f1"}.get(argv[1], "macro_f1 (demographics), auc (ctr)")
    assert f"(default: {metric})" in text


def test_embed_help_names_the_command_and_explains_the_data_flags(capsys):
    with pytest.raises(SystemExit):
        cli(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: ptum-hf embed ")
    assert "--dataset DATASET A built-in source (synthetic, movielens-100k, mind) or a behavior log path/glob." in text
    assert "--num_users NUM_USERS, --num-users NUM_USERS Users generated by the synthetic source." in text
