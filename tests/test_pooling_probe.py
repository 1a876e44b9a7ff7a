"""examples/pooling_probe.py, tiny, on the real MovieLens-100K: one row per seed and label ratio, both features paired
with SVD + LR on every split, a seed's pre-training reused by a second run with the same settings and refused with
other ones."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

SCRIPT = [sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "pooling_probe.py")]
REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ml-100k")


def run(*flags):
    return subprocess.run([*SCRIPT, *flags], capture_output=True, text=True, timeout=900, env=subprocess_env())


@pytest.mark.skipif(not os.path.isdir(REAL), reason="needs ../shared/data/ml-100k")
def test_one_row_per_seed_and_ratio_paired_by_split(tmp_path):
    out = tmp_path / "pooling"
    flags = ["--data_dir", REAL, "--output_dir", str(out), "--splits", "2", "--size", "tiny", "--ratios", "0.2"]
    result = run(*flags, "--seeds", "0,1", "--max_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["ratio"]) for r in written["results"]] == [(0, 0.2), (1, 0.2)]
    for r in written["results"]:
        assert len(r["splits"]) == 2 and set(r["splits"][0]) == {"split", "svd_lr", "user", "behavior_mean"}
        assert 0.0 <= r["splits"][0]["behavior_mean"]["gender_auc"] <= 1.0
    rows = [line for line in (out / "results.md").read_text().splitlines() if re.match(r"\| \d \|", line)]
    assert [line.split("|")[1:3] for line in rows] == [[" 0 ", " 20% "], [" 1 ", " 20% "]]
    assert all(len(re.findall(r"\([+-]\d\.\d{3} ± \d\.\d{3} \(\d/2 > 0\)\)", line)) == 4 for line in rows)  # 2 x 2
    config = json.loads((out / "seed1" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["use_bag"] and config["max_behaviors"] == 800

    # A second run with the same settings reuses each seed's pre-training: the same vectors, so the same figures.
    weights = (out / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run(*flags, "--seeds", "0", "--max_steps", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns == weights
    rerun = json.loads((out / "results.json").read_text())["results"]
    assert [r["splits"] for r in rerun] == [written["results"][0]["splits"]] and rerun[0]["pretrain_seconds"] == 0

    # Other settings on the same folder are refused before any work, and nothing there is touched.
    other = run(*flags, "--seeds", "0", "--max_steps", "3")
    assert other.returncode == 1 and "seed0 holds a pre-training made with other settings" in other.stderr
    assert (out / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns == weights


def test_bad_settings_are_refused_before_any_work(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("pooling_probe", SCRIPT[1])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for flags, message in (
        (["--seeds", "0,x"], "--seeds must be integers"),
        (["--seeds", "-1"], "--seeds must be at least 0"),
        (["--ratios", "0.2,x"], "--ratios must be numbers"),
        (["--ratios", "0.2,1.5"], "every --ratios value must be in (0, 1]"),
        (["--splits", "1"], "--splits must be at least 2"),
        (["--max_steps", "0"], "--max_steps must be positive"),
    ):
        monkeypatch.setattr(sys, "argv", ["pooling_probe.py", "--data_dir", "x", *flags])
        with pytest.raises(SystemExit) as exited:
            script.parse_args()
        assert exited.value.code == 2 and message in capsys.readouterr().err, flags
