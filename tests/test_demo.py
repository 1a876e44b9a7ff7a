"""`make demo` (examples/demo.py), tiny: every model's row on the same splits, and the two paired comparisons."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_baselines_and_ptum_rows_paired_by_split(tmp_path):
    out = tmp_path / "demo"
    flags = ["--num_users", "150", "--labeled_users", "40", "--splits", "2", "--pretrain_epochs", "1"]
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--output_dir",
            str(out),
            *flags,
            "--finetune_epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    names = ["LR, TF-IDF words of the texts", "from scratch", "PTUM no finetune", "PTUM finetune"]
    assert set(names) <= set(rows) and all(len(rows[name]) == 2 for name in rows)  # one entry per split
    report = (out / "results.md").read_text()
    assert "PTUM finetune minus from scratch" in report and "minus the strongest baseline" in report
    assert "(2/2 splits)" in report or "(1/2 splits)" in report or "(0/2 splits)" in report
    assert report in result.stdout
    assert (out / "pretrain" / "model" / "README.md").exists()  # the card


def test_demo_refuses_more_labeled_users_than_the_training_split(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--num_users", "100", "--labeled_users", "500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--labeled_users must be in [1, 80]" in result.stderr
