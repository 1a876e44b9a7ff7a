"""Inference from raw events: `model.encode` / `predict` / `predict_proba`, the PTUM pipelines, `read_behavior_log`
on a DataFrame, and the README's "Use a pre-trained user model" code run where `import ptum_hf` fails."""

import json
import re
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import pipeline

from ptum_hf import PTUMForDemographicClassification, PTUMModel
from ptum_hf.data import BehaviorTokenCache, read_behavior_log, train_behavior_tokenizer
from ptum_hf.data.collators import UserCollator
from ptum_hf.embedding import iter_user_embeddings
from ptum_hf.hub import save_for_hub
from ptum_hf.processing_ptum import history_windows

from conftest import run_python, subprocess_env, tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"
WORDS = "news sports movie music game travel food science art politics drama comedy".split()
LABEL_NAMES = {"age": ["<25", "25-34", "35+"], "gender": ["F", "M"]}
TOLERANCE = 1e-6


def make_events(seed: int = 0, users: int = 7) -> list[dict]:
    """Users of 1 to 12 events (more than `max_behaviors` for most), times out of order, one exact repeat."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(users):
        for _ in range(int(rng.integers(1, 13))):
            text = " ".join(rng.choice(WORDS, int(rng.integers(1, 5))))
            events.append(
                {"user_id": f"u{user}", "timestamp": int(1_600_000_000 + rng.integers(0, 10**6)), "text": text}
            )
    events.append(dict(events[3]))
    order = rng.permutation(len(events))
    return [events[i] for i in order]


@pytest.fixture(scope="module")
def events():
    return make_events()


@pytest.fixture(scope="module")
def tokenizer(events):
    return train_behavior_tokenizer([e["text"] for e in events], vocab_size=60, min_frequency=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    """A fine-tuned-like demographics checkpoint with class names and behavior id buckets, saved with its code."""
    config = tiny_config(
        vocab_size=len(tokenizer),
        max_behaviors=4,
        behavior_id_buckets=16,
        label_heads={"age": 3, "gender": 2},
        label_names=LABEL_NAMES,
    )
    torch.manual_seed(0)
    model = PTUMForDemographicClassification(config)
    with torch.no_grad():  # visible differences between classes
        model.classifier.bias.copy_(torch.linspace(-1, 1, 5))
    return save_for_hub(model, tmp_path_factory.mktemp("checkpoint") / "model", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def classifier(folder):
    return PTUMForDemographicClassification.from_pretrained(folder)


def embed_reference(folder, tokenizer, log_path) -> tuple[list, np.ndarray]:
    """What `ptum-hf embed` computes for a log: `read_behavior_log`, the behavior cache, `iter_user_embeddings`."""
    model = PTUMModel.from_pretrained(folder)
    data = read_behavior_log(log_path)
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, model.config.max_tokens_per_behavior)
    ids, vectors = [], []
    for batch_ids, batch in iter_user_embeddings(model, data, cache, batch_size=3):
        ids += batch_ids
        vectors.append(batch)
    return ids, np.concatenate(vectors)


# ----------------------------------------------------------------------------- the model methods


def test_encode_matches_ptum_hf_embed_for_every_input_kind(folder, tokenizer, classifier, events, tmp_path):
    frame = pd.DataFrame(events)
    frame.to_csv(tmp_path / "log.csv", index=False)
    frame.to_csv(tmp_path / "log.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "log.parquet")
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ids, expected = embed_reference(folder, tokenizer, tmp_path / "log.csv")
    assert len(ids) == 7

    inputs = {
        "dicts": events,
        "DataFrame": frame,
        "Dataset": datasets.Dataset.from_pandas(frame),
        **{suffix: str(tmp_path / f"log.{suffix}") for suffix in ("csv", "tsv", "jsonl", "parquet")},
    }
    model = PTUMModel.from_pretrained(folder)
    for kind, users in inputs.items():
        for encoder in (model, classifier):  # a head model encodes with its user model
            result = encoder.encode(users, batch_size=2)
            assert result.user_ids == ids, kind
            assert isinstance(result.embeddings, np.ndarray) and result.embeddings.dtype == np.float32
            np.testing.assert_allclose(result.embeddings, expected, atol=TOLERANCE, rtol=0, err_msg=kind)
    as_torch = model.encode(events, tokenizer=tokenizer, return_tensors="pt").embeddings
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), expected, atol=TOLERANCE, rtol=0)


def test_user_collator_and_raw_events_share_one_window_rule(folder, tokenizer, events):
    """The collators' windows are `processing_ptum.history_windows`: the last max_behaviors, gaps to the last one."""
    behavior_ids = np.array([5, 6, 7, 8, 9, 10])
    timestamps = np.array([100, 160, 400, 1000, 1003, 1010])
    ids, gaps, lengths = history_windows(behavior_ids, timestamps, np.array([0, 4]), np.array([4, 6]), 3)
    np.testing.assert_array_equal(ids, [[6, 7, 8], [9, 10, -1]])
    np.testing.assert_array_equal(gaps, [[840, 600, 0], [7, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 2])
    assert UserCollator.windows.__doc__ and "history_windows" in UserCollator.windows.__doc__


def test_predict_gives_class_names_per_head(classifier, tokenizer, events):
    probabilities = classifier.predict_proba(events)
    assert probabilities.class_names == LABEL_NAMES
    for head, names in LABEL_NAMES.items():
        table = probabilities.probabilities[head]
        assert table.shape == (7, len(names))
        np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-6)
    predictions = classifier.predict(pd.DataFrame(events))
    assert predictions.user_ids == probabilities.user_ids
    for head, names in LABEL_NAMES.items():
        best = probabilities.probabilities[head].argmax(1)
        assert predictions.labels[head] == [names[i] for i in best]
    # Without class names the class ids, as strings.
    plain = PTUMForDemographicClassification(tiny_config(vocab_size=len(tokenizer), label_heads={"age": 3}))
    labels = plain.predict(events, tokenizer=tokenizer).labels["age"]
    assert set(labels) <= {"0", "1", "2"} and len(labels) == 7


@pytest.mark.parametrize(
    "users, message",
    [
        ({"user_id": "u1", "timestamp": 1, "text": "a"}, "wrap a single event in a list"),
        ([{"user_id": "u1", "text": "a"}], r"event 0 lacks key\(s\) \['timestamp'\]"),
        ([{"user_id": None, "timestamp": 1, "text": "a"}], "event 0: user_id must be"),
        ([{"user_id": 1.5, "timestamp": 1, "text": "a"}], "event 0: user_id must be"),
        (
            [{"user_id": "u", "timestamp": 1, "text": "a"}, {"user_id": "u", "timestamp": "yesterday", "text": "b"}],
            "event 1: timestamp must be",
        ),
        ([{"user_id": "u", "timestamp": float("nan"), "text": "a"}], "event 0: timestamp must be"),
        ([{"user_id": "u", "timestamp": 1, "text": "  "}], "event 0: text must be"),
        ([], "no events given"),
        (pd.DataFrame({"user": ["u"], "timestamp": [1], "text": ["a"]}), r"lack column\(s\) \['user_id'\]"),
        ("no/such/log.csv", "no such log file"),
        (42, "users must be a list of event dicts"),
    ],
)
def test_bad_events_are_refused_by_name(classifier, tokenizer, users, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        classifier.encode(users, tokenizer=tokenizer)


def test_a_missing_tokenizer_is_named(tmp_path, events):
    model = PTUMModel(tiny_config())
    with pytest.raises(ValueError, match="not loaded from a checkpoint: pass tokenizer="):
        model.encode(events)
    loaded = PTUMModel.from_pretrained(save_for_hub(model, tmp_path / "no-tokenizer"))
    with pytest.raises(OSError, match="holds no tokenizer .*pass tokenizer="):
        loaded.encode(events)


def test_dates_and_per_user_rows_read_as_numbers_and_events(classifier, tokenizer):
    events = [
        {"user_id": 7, "timestamp": 1_700_000_000, "text": "news  sports"},
        {"user_id": "7", "timestamp": "2023-11-14T22:13:21Z", "text": "movie"},
        {"user_id": "8", "timestamp": pd.Timestamp("2023-11-14 22:13:20"), "text": "game"},
    ]
    per_user = [
        {"user_id": "7", "timestamp": [1_700_000_000, 1_700_000_001], "text": ["news sports", "movie"]},
        {"user_id": "8", "timestamp": [1_700_000_000], "text": ["game"]},
    ]
    first, second = (classifier.encode(users, tokenizer=tokenizer) for users in (events, per_user))
    assert first.user_ids == second.user_ids == ["7", "8"]
    np.testing.assert_allclose(first.embeddings, second.embeddings, atol=TOLERANCE, rtol=0)


# ----------------------------------------------------------------------------- read_behavior_log


def test_read_behavior_log_accepts_a_dataframe(events, tmp_path):
    frame = pd.DataFrame(events)
    frame.to_csv(tmp_path / "log.csv", index=False)
    from_file, from_frame = read_behavior_log(tmp_path / "log.csv"), read_behavior_log(frame)
    assert from_frame.behaviors == from_file.behaviors
    assert from_frame.users.to_list() == from_file.users.to_list()
    assert from_frame.report.files == ["<DataFrame>"]
    renamed = read_behavior_log(frame.rename(columns={"text": "title"}), column_map={"title": "text"})
    assert renamed.behaviors == from_file.behaviors
    with pytest.raises(ValueError, match="missing column"):
        read_behavior_log(frame.drop(columns="text"))
    with pytest.raises(ValueError, match="user ids must be strings or integers"):
        read_behavior_log(frame.assign(user_id=1.0))


# ----------------------------------------------------------------------------- pipelines


def test_registered_pipelines_take_raw_events(folder, classifier, tokenizer, events):
    expected = classifier.encode(events)
    extract = pipeline("user-feature-extraction", model=classifier.ptum, tokenizer=tokenizer)
    results = extract(events, batch_size=3)
    assert [r["user_id"] for r in results] == expected.user_ids
    np.testing.assert_allclose([r["embedding"] for r in results], expected.embeddings, atol=TOLERANCE, rtol=0)
    assert isinstance(extract(events, return_tensors=True)[0]["embedding"], torch.Tensor)

    classify = pipeline("user-classification", model=classifier, tokenizer=tokenizer)
    probabilities = classifier.predict_proba(events)
    top = classify(pd.DataFrame(events))
    every = classify(events, top_k=None)
    for row, (best, ranked) in enumerate(zip(top, every)):
        for head, names in LABEL_NAMES.items():
            column = probabilities.probabilities[head][row]
            assert best[head] == ranked[head][0]
            assert best[head]["label"] == names[int(column.argmax())]
            assert best[head]["score"] == pytest.approx(float(column.max()), abs=1e-6)
            assert sorted(r["label"] for r in ranked[head]) == sorted(names)
    with pytest.raises(ValueError, match="user-classification needs a fine-tuned"):
        pipeline("user-classification", model=classifier.ptum, tokenizer=tokenizer)


def test_text_feature_extraction_points_to_the_user_tasks(classifier, tokenizer):
    extract = pipeline("feature-extraction", model=classifier.ptum, tokenizer=tokenizer)
    with pytest.raises(TypeError, match="pipeline\\('user-feature-extraction'"):
        extract("news sports")


def test_feature_extraction_of_a_checkpoint_reads_raw_events(folder, classifier, events):
    """The checkpoint names its own pipeline for `feature-extraction` (it failed with `history_indices is
    required` / `unexpected keyword argument 'input_ids'` before)."""
    extract = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    assert type(extract).__name__ == "PTUMUserFeatureExtractionPipeline"
    expected = classifier.encode(events)
    results = extract(events)
    assert [r["user_id"] for r in results] == expected.user_ids
    np.testing.assert_allclose([r["embedding"] for r in results], expected.embeddings, atol=TOLERANCE, rtol=0)


def test_a_checkpoint_ships_the_inference_code(folder):
    names = {p.name for p in Path(folder).iterdir()}
    assert {"processing_ptum.py", "pipeline_ptum.py", "modeling_ptum.py", "configuration_ptum.py"} <= names
    pipelines = json.loads((Path(folder) / "config.json").read_text())["custom_pipelines"]
    assert set(pipelines) == {"user-feature-extraction", "user-classification", "feature-extraction"}
    assert pipelines["user-classification"]["impl"] == "pipeline_ptum.PTUMUserClassificationPipeline"


# ----------------------------------------------------------------------------- the README, without ptum_hf


def readme_section_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Use a pre-trained user model", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section has one Python example"
    return blocks[0]


def test_readme_section_runs_from_a_checkpoint_alone_without_ptum_hf(folder, classifier, tmp_path):
    code = readme_section_code()
    assert 'folder = "outputs/finetune-demographics/model"' in code
    # The checkpoint copied alone into a fresh folder; ptum_hf shadowed by a module that refuses to import.
    alone = tmp_path / "only-the-checkpoint"
    alone.mkdir()
    for path in Path(folder).iterdir():
        (alone / path.name).write_bytes(path.read_bytes())
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "ptum_hf.py").write_text('raise ImportError("ptum_hf is not installed here")\n')
    footer = textwrap.dedent(
        """
        try:
            import ptum_hf  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("ptum_hf was importable")
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        print("RESULT=" + json.dumps({
            "user_ids": users.user_ids,
            "embeddings": users.embeddings.tolist(),
            "labels": labels,
            "probabilities": {head: p.tolist() for head, p in probabilities.probabilities.items()},
            "embedded": embedded,
            "classified": classified,
        }))
        """
    )
    script = "import json\n" + code.replace('"outputs/finetune-demographics/model"', repr(str(alone))) + footer
    env = subprocess_env(PYTHONPATH=str(blocker), HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = run_python(script, tmp_path, env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    remote = json.loads(result.stdout.split("RESULT=")[-1])

    # The same calls in this process, through ptum_hf.
    events = [
        {"user_id": "u1", "timestamp": 1700000000, "text": "Toy Story (1995) Animation Comedy"},
        {"user_id": "u1", "timestamp": 1700003600, "text": "Heat (1995) Action Crime Thriller"},
        {"user_id": "u2", "timestamp": 1700000000, "text": "Sense and Sensibility (1995) Drama Romance"},
    ]
    users = classifier.encode(events)
    assert remote["user_ids"] == users.user_ids == ["u1", "u2"]
    np.testing.assert_allclose(remote["embeddings"], users.embeddings, atol=TOLERANCE, rtol=0)
    assert remote["labels"] == classifier.predict(events).labels
    for head, table in classifier.predict_proba(events).probabilities.items():
        np.testing.assert_allclose(remote["probabilities"][head], table, atol=TOLERANCE, rtol=0)
    assert [r["user_id"] for r in remote["embedded"]] == ["u1", "u2"]
    np.testing.assert_allclose([r["embedding"] for r in remote["embedded"]], users.embeddings, atol=TOLERANCE, rtol=0)
    assert [r["user_id"] for r in remote["classified"]] == ["u1", "u2"]
    for row, result_row in enumerate(remote["classified"]):
        for head, names in LABEL_NAMES.items():
            assert result_row[head]["label"] == remote["labels"][head][row]
            assert result_row[head]["label"] in names
