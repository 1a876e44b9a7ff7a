"""examples/unlabeled_users.py, tiny: one row per log size, the probe paired with each baseline on every split."""

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

SCRIPT = [sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "unlabeled_users.py")]


def test_one_row_per_log_size_paired_by_split(tmp_path):
    out = tmp_path / "users"
    flags = ["--users", "80,120", "--labeled_users", "20", "--splits", "2", "--size", "tiny", "--max_steps", "2"]
    result = subprocess.run(
        [*SCRIPT, "--output_dir", str(out), *flags], capture_output=True, text=True, timeout=900, env=subprocess_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "results.json").read_text())
    assert [r["users"] for r in written["results"]] == [80, 120]
    for r in written["results"]:
        assert len(r["splits"]) == 2 and set(r["splits"][0]) == {"probe", "svd_lr", "lr_tfidf_words"}
        assert 0.0 <= r["splits"][0]["probe"]["gender_auc"] <= 1.0
    report = (out / "results.md").read_text()
    rows = [line for line in report.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [line.split("|")[1].strip() for line in rows] == ["80", "120"]
    assert all(len(re.findall(r"\([+-]\d\.\d{3}, \d/2\)", line)) == 4 for line in rows)  # 2 metrics x 2 baselines
    config = json.loads((out / "users120" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16  # --size tiny reached pre-training


def test_bad_settings_are_refused_before_any_work():
    for flags, message in (
        (["--users", "100,x"], "--users must be integers"),
        (["--users", "100", "--labeled_users", "90"], "at most 80% of the smallest of --users"),
        (["--max_steps", "0"], "--max_steps must be at least 1"),
    ):
        result = subprocess.run([*SCRIPT, *flags], capture_output=True, text=True, timeout=120, env=subprocess_env())
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-500:])
