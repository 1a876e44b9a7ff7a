"""`make demo` (examples/demo.py), tiny: every model's row on the same splits, and the two paired comparisons."""

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, str(ROOT / "examples" / "demo.py")]


def test_demo_prints_baselines_and_ptum_rows_paired_by_split(tmp_path):
    out = tmp_path / "demo"
    flags = ["--num_users", "150", "--labeled_users", "40", "--splits", "2", "--size", "tiny"]
    result = subprocess.run(
        [*DEMO, "--output_dir", str(out), *flags, "--pretrain_epochs", "1", "--finetune_epochs", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "results.json").read_text())
    rows, settings = written["rows"], written["settings"]
    names = ["LR, TF-IDF words of the texts", "from scratch", "PTUM no finetune", "PTUM finetune"]
    assert set(names) <= set(rows) and all(len(runs) == 2 for runs in rows.values())  # one entry per split
    assert settings["labeled_users_per_split"] == 40 and settings["size"] == "tiny"
    report = (out / "results.md").read_text()
    assert "PTUM finetune minus from scratch" in report and "minus the strongest baseline" in report
    assert len(re.findall(r"\(\d/2 splits\)", report)) == 8  # 4 metrics, 2 comparisons, each over both splits
    assert report in result.stdout
    config = json.loads((out / "pretrain" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16  # --size tiny reached pre-training


def test_demo_refuses_bad_settings_before_any_work(tmp_path):
    for flags, message in (
        (["--num_users", "100", "--labeled_users", "500"], "--labeled_users must be at most 80"),
        (["--labeled_users", "1"], "--labeled_users must be at least 10"),
        (["--pretrained", str(tmp_path)], "not a model folder (no config.json there)"),
    ):
        result = subprocess.run([*DEMO, *flags], capture_output=True, text=True, timeout=120, env=subprocess_env())
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-500:])
