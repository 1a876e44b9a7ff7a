"""What a user gets from `pip install ptum-hf` and from a checkpoint it wrote: dependency floors that are tested, the
license, and Trainer checkpoints and tokenizers that load where ptum_hf is not installed."""

import configparser
import importlib.metadata
import json
import os
import runpy
import subprocess
import textwrap
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from safetensors.torch import load_file

from ptum_hf import PTUMConfig, PTUMModel
from ptum_hf.cli import main as cli
from ptum_hf.data import load_behavior_data, train_behavior_tokenizer
from ptum_hf.data.tokenization import PORTABLE_TOKENIZER_CLASS
from ptum_hf.hub import save_for_hub
from ptum_hf.modelcard import PTUMModelCardData
from ptum_hf.modeling_ptum import REMOTE_AUTO_MAP, PTUMPreTrainedModel

from conftest import TINY, run_python, subprocess_env

ROOT = Path(__file__).resolve().parent.parent
USERS = 160
PROMPT = "Do you wish to run the custom code"


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _install_requires() -> list[Requirement]:
    lines = _setup_cfg()["options"]["install_requires"].splitlines()
    return [Requirement(line) for line in map(str.strip, lines) if line]


# ----------------------------------------------------------------------------- dependency floors


def test_the_floors_file_pins_every_requirement_at_its_setup_cfg_floor():
    floors = runpy.run_path(str(ROOT / ".ci" / "floors.py"))["floors"]()
    requirements = _install_requires()
    assert list(floors) == [requirement.name for requirement in requirements]
    for requirement in requirements:
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert lower == [floors[requirement.name]], requirement


def test_installed_versions_are_within_the_declared_ranges():
    """In `make test` the newest releases, in `make test-floors` (PTUM_HF_EXPECT_FLOORS=1) exactly the floors."""
    at_floor = os.environ.get("PTUM_HF_EXPECT_FLOORS") == "1"
    for requirement in _install_requires():
        installed = Version(importlib.metadata.version(requirement.name))
        assert requirement.specifier.contains(installed, prereleases=True), (requirement, installed)
        if at_floor:
            floor = next(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")
            assert installed.release[: len(floor.release)] == floor.release, (requirement, installed)


def test_setup_cfg_and_pyproject_agree():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in pyproject  # the package's metadata is written once, in setup.cfg
    python_floor = _setup_cfg()["options"]["python_requires"].removeprefix(">=")
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + python_floor.replace(".", "")
    assert any(req.startswith("setuptools") for req in pyproject["build-system"]["requires"])


def test_the_package_ships_the_apache_license_it_declares():
    metadata = _setup_cfg()["metadata"]
    assert metadata["license"] == "Apache-2.0"
    assert "LICENSE" in metadata["license_files"].split()
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert PTUMModelCardData().license == "apache-2.0"


# ----------------------------------------------------------------------------- checkpoints without ptum_hf


def test_the_remote_auto_map_names_every_model_class():
    named = {ref.split(".")[-1] for ref in REMOTE_AUTO_MAP.values()}
    assert {cls.__name__ for cls in PTUMPreTrainedModel.__subclasses__()} <= named
    assert REMOTE_AUTO_MAP["AutoModelForCTR"] == "modeling_ptum.PTUMForCTR"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """`ptum-hf finetune demographics` from a tiny checkpoint (random weights: what is tested is the files)."""
    data = load_behavior_data("synthetic", num_users=USERS)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=300)
    config = PTUMConfig(**TINY, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    base = save_for_hub(PTUMModel(config), tmp_path_factory.mktemp("base") / "model", tokenizer=tokenizer)
    out = tmp_path_factory.mktemp("finetune")
    cli(["finetune", "demographics", "--model_name_or_path", str(base), "--num_users", str(USERS)]
        + ["--output_dir", str(out), "--num_train_epochs", "1", "--save_total_limit", "2"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def checkpoint(finetuned):
    checkpoints = sorted(finetuned.glob("checkpoint-*"))
    assert checkpoints, sorted(p.name for p in finetuned.iterdir())
    return checkpoints[-1]


def _run_without_ptum_hf(tmp_path, script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter where `import ptum_hf` raises ImportError, with stdin closed (a prompt for
    remote code then reads end of file at once instead of waiting)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "ptum_hf.py").write_text('raise ImportError("ptum_hf is not installed here")\n')
    prelude = (
        "try:\n    import ptum_hf\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('ptum_hf imported')\n"
    )
    env = subprocess_env(PYTHONPATH=str(blocker), HF_MODULES_CACHE=str(tmp_path / "modules"))
    return run_python(prelude + textwrap.dedent(script), tmp_path, env)


def test_a_trainer_checkpoint_loads_as_remote_code_without_ptum_hf(checkpoint, tmp_path):
    assert {"configuration_ptum.py", "modeling_ptum.py"} <= {p.name for p in checkpoint.iterdir()}
    out = tmp_path / "loaded.safetensors"
    result = _run_without_ptum_hf(
        tmp_path,
        f"""
        from safetensors.torch import save_file
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(model).__name__ == "PTUMForDemographicClassification", type(model)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        save_file(model.state_dict(), {str(out)!r})
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected, loaded = load_file(checkpoint / "model.safetensors"), load_file(out)
    assert expected.keys() == loaded.keys()
    assert all((expected[name] == loaded[name]).all() for name in expected)


def test_saved_tokenizers_name_a_class_every_supported_transformers_loads(finetuned, checkpoint):
    for folder in (checkpoint, finetuned / "model"):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS, folder
        assert "auto_map" not in config  # the tokenizer is transformers' own: no custom code to trust


def test_a_checkpoint_tokenizer_loads_without_a_prompt(checkpoint, tmp_path):
    """With only the checkpoint: the tokenizer class needs no code, and asking for the model's code is not needed."""
    result = _run_without_ptum_hf(
        tmp_path,
        f"""
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
        for tokenizer in (
            PreTrainedTokenizerFast.from_pretrained({str(checkpoint)!r}),
            AutoTokenizer.from_pretrained({str(checkpoint)!r}, trust_remote_code=True),
        ):
            assert tokenizer("sports news")["input_ids"], tokenizer
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert PROMPT not in result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.xfail(
    Version(transformers.__version__).major >= 5,
    reason="transformers 5's AutoTokenizer always reads the model's config first (AutoConfig), and a config whose "
    "auto_map points to custom code makes it ask to run that code; transformers 4 skips the config when "
    "tokenizer_config.json names a class, as ours does",
    strict=True,
)
def test_plain_auto_tokenizer_loads_a_checkpoint_without_a_prompt(checkpoint, tmp_path):
    result = _run_without_ptum_hf(
        tmp_path,
        f"""
        from transformers import AutoTokenizer
        print(type(AutoTokenizer.from_pretrained({str(checkpoint)!r})).__name__)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert PROMPT not in result.stdout + result.stderr


def test_with_ptum_hf_installed_auto_tokenizer_needs_no_prompt(checkpoint, tmp_path):
    script = (
        f"import ptum_hf\nfrom transformers import AutoTokenizer\nAutoTokenizer.from_pretrained({str(checkpoint)!r})"
    )
    result = run_python(script, tmp_path, subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert PROMPT not in result.stdout + result.stderr


def test_a_behavior_tokenizer_saves_and_loads_back_the_same_and_stays_portable(tmp_path):
    from ptum_hf.data import load_tokenizer
    from ptum_hf.data.tokenization import BehaviorTokenizer

    texts = ["Sports news today", "weather report", "sports scores and news"] * 3
    tokenizer = train_behavior_tokenizer(texts, vocab_size=80, min_frequency=1)
    tokenizer.save_pretrained(tmp_path / "first")
    loaded = load_tokenizer(str(tmp_path / "first"))
    assert type(loaded) is BehaviorTokenizer
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    loaded.save_pretrained(tmp_path / "again")  # a fine-tuned checkpoint saves the tokenizer it loaded
    for folder in ("first", "again"):
        config = json.loads((tmp_path / folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS
