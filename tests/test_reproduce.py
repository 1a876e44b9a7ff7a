"""`ptum-hf reproduce --quick`: every experiment runs end to end on tiny settings and writes its tables and plots.

No figures are checked (they are noise at this size), only that the files exist, the tables have the expected
rows and columns, and a second invocation reuses the recorded runs instead of training again.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from ptum_hf.reproduce import baselines, experiments, jobs, main
from ptum_hf.reproduce.baselines import cosine_scores, ctr_baselines
from ptum_hf.reproduce.jobs import Context, Job, run_jobs
from ptum_hf.reproduce.report import group, with_baselines
from ptum_hf.reproduce.settings import (
    EXPERIMENTS,
    MEASURED_DEFAULTS,
    MOVIELENS,
    SYNTHETIC,
    build_settings,
    parse_args,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(text: str) -> list[list[str]]:
    """Body rows of every Markdown table in `text` (header and separator rows dropped)."""
    lines = text.splitlines() + [""]
    separator = lambda line: line.startswith("|") and set(line) <= set("|-")  # noqa: E731
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line, following in zip(lines, lines[1:])
        if line.startswith("|") and not separator(line) and not separator(following)
    ]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reproduce")
    info = main(["--quick", "--output_dir", str(out), "--num_threads", "1"])
    return out, info


def test_quick_writes_every_table_and_plot(quick_run):
    out, info = quick_run
    for name in ("baselines", "table2", "table3", "ablation", "lambda", "k", "scale", "probe"):
        text = (out / f"{name}.md").read_text()
        assert "by `ptum-hf reproduce --quick" in text and "runs.jsonl" in text and "QUICK" in text
    for name in ("table2", "table3", "ablation", "lambda", "k"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".tmp-*")), "a temporary file was left behind"
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    assert run["quick"] and run["experiments"] == list(EXPERIMENTS) and run["git_commit"]
    assert run["cells"]["demographics/synthetic"]["model_overrides"]["hidden_size"] == 16  # what each cell ran
    assert info["seconds"] > 0


def test_table_structure(quick_run):
    out, _ = quick_run
    table2 = (out / "table2.md").read_text()
    assert "| dataset | model | labels | variant | n | age_accuracy | age_macro_f1 | gender_accuracy |" in table2
    variants = {row[3] for row in table_rows(table2.split("### Paired")[0])}
    assert {
        "from scratch",
        "PTUM no finetune",
        "PTUM finetune",
        "majority class",
        "LR, TF-IDF bag-of-items",
        "LR, TF-IDF bag of the same recent items",
    } <= variants
    baselines = {row[3] for row in table_rows((out / "baselines.md").read_text())}
    assert "LR, TF-IDF bag of the last 20 items" in baselines  # the tiny size keeps 20 behaviors
    paired = table_rows(table2.split("### Paired")[1])
    comparisons = {row[3] for row in paired}
    assert "PTUM finetune − from scratch" in comparisons and "PTUM finetune − LR, TF-IDF bag-of-items" in comparisons
    for row in paired:  # "+0.012 (1/1 > 0)" style: a signed mean and a count of positive splits
        for cell in row[4:]:
            assert cell == "n/a" or ("/1 > 0)" in cell and cell[0] in "+-")
    table3 = (out / "table3.md").read_text()
    assert "| auc | ap |" in table3
    assert {"item mean click rate", "LR, user + item one-hot"} <= {r[3] for r in table_rows(table3)}
    ablation = (out / "ablation.md").read_text()
    settings = {row[2] for row in table_rows(ablation) if len(row) > 5}
    assert {"none", "mbp only", "nbp only", "mbp+nbp"} <= settings
    assert {"lambda=0", "lambda=1"} <= {row[2] for row in table_rows((out / "lambda.md").read_text())}
    assert {"K=1", "K=2"} <= {row[2] for row in table_rows((out / "k.md").read_text())}
    scale = (out / "scale.md").read_text()
    assert "4 users" in scale
    scale_pairs = {row[3] for row in table_rows(scale.split("### Paired")[1])}  # its baselines join as in table2
    assert {"PTUM finetune − from scratch", "PTUM finetune − LR, TF-IDF words of the texts"} <= scale_pairs


def test_records_are_reused(quick_run):
    out, _ = quick_run
    before = (out / "raw" / "table2.jsonl").read_text()
    records = [json.loads(line) for line in before.splitlines()]
    assert {r["variant"] for r in records} == {"scratch", "ptum_frozen", "ptum_finetune"}
    assert all(0.0 <= r["metrics"]["age_accuracy"] <= 1.0 for r in records)
    info = main(["--quick", "--output_dir", str(out), "--experiments", "table2", "--num_threads", "1"])
    assert (out / "raw" / "table2.jsonl").read_text() == before  # nothing trained again
    assert info["seconds"] < 60


def test_jobs_give_the_same_records_as_one_process(quick_run, tmp_path):
    out, _ = quick_run
    main(
        [
            "--quick",
            "--output_dir",
            str(tmp_path),
            "--work_dir",
            str(out / ".work"),
            "--experiments",
            "table2",
            "--num_threads",
            "1",
            "--jobs",
            "2",
        ]
    )  # the same pre-trained model: only the fine-tunes run again
    metrics = lambda folder: {
        tuple(r[k] for k in ("variant", "ratio", "repeat")): r["metrics"]  # noqa: E731
        for r in map(json.loads, (folder / "raw" / "table2.jsonl").read_text().splitlines())
    }
    one, two = metrics(out), metrics(tmp_path)
    assert one.keys() == two.keys() and len(one) == 3
    for key in one:  # seeded per repeat: a fine-tune in a worker is the same run as in the main process
        assert one[key]["loss"] == two[key]["loss"], key
        assert all(0.0 <= two[key][m] <= 1.0 for m in ("age_accuracy", "gender_accuracy", "macro_f1")), key
    assert json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])["jobs"] == 2


def test_sweeps_can_run_in_the_synthetic_scale_setting(tmp_path):
    main(
        [
            "--quick",
            "--output_dir",
            str(tmp_path),
            "--experiments",
            "lambda",
            "--sweep_data",
            "scale",
            "--num_threads",
            "1",
        ]
    )
    records = [json.loads(line) for line in (tmp_path / "raw" / "lambda.jsonl").read_text().splitlines()]
    assert {(r["dataset"], r["ratio"], r["setting"]) for r in records} == {
        ("synthetic", 4, "lambda=0"),
        ("synthetic", 4, "lambda=1"),
    }  # QUICK: 4 labeled users of scale_users


def test_same_history_baseline_joins_the_model_that_sees_that_history():
    def record(preset, variant, auc, max_behaviors=None):
        row = {
            "task": "demographics",
            "dataset": "movielens-100k",
            "preset": preset,
            "ratio": 1.0,
            "repeat": 0,
            "setting": "-" if preset == "-" else "mbp+nbp",
            "variant": variant,
            "metrics": {"gender_auc": auc},
        }
        return row if max_behaviors is None else {**row, "max_behaviors": max_behaviors}

    baselines = group(
        [record("-", "lr_tfidf", 0.74), record("-", "lr_tfidf_last50", 0.68), record("-", "lr_tfidf_last200", 0.74)]
    )
    assert all(cell.max_behaviors is None for cell in baselines.values())
    # The record's max_behaviors decides, not the label (which only names departures from the default recipe).
    for label, history, expected in (
        ("hsa", 50, 0.68),
        ("hsa (item ids) [200 behaviors]", 200, 0.74),
        ("hsa [paper]", 100, None),
        ("hsa [200 behaviors]", 50, 0.68),
        ("hsa", None, None),
    ):
        cells = group([record(label, "scratch", 0.7, history)])
        ((_, rows),) = with_baselines(cells, baselines)
        assert not any(v.startswith("lr_tfidf_last") for v in rows)
        assert rows.get("lr_tfidf_same", {0: {}})[0].get("gender_auc") == expected
        assert rows["lr_tfidf"][0]["gender_auc"] == 0.74
    disagreeing = group([record("hsa", "scratch", 0.7, 50), record("hsa", "ptum_finetune", 0.7, 200)])
    assert next(iter(disagreeing.values())).max_behaviors is None


def test_records_carry_their_history_length(quick_run):
    out, _ = quick_run
    for experiment in ("table2", "table3", "ablation", "lambda", "k", "probe", "scale"):
        for record in map(json.loads, (out / "raw" / f"{experiment}.jsonl").read_text().splitlines()):
            if record["preset"] == "-":  # baselines recorded beside the models
                assert "max_behaviors" not in record
            else:
                assert record["max_behaviors"] == 20, (experiment, record)  # the tiny size
    baselines = [json.loads(line) for line in (out / "raw" / "baselines.jsonl").read_text().splitlines()]
    assert baselines and not any("max_behaviors" in record for record in baselines)


def test_cosine_baseline_sees_the_models_history_length(tmp_path):
    settings = build_settings(parse_args(["--quick", "--max_behaviors", "3"]))
    ctx = Context(settings, tmp_path, tmp_path / ".work", quick=True)
    result = ctr_baselines(ctx, "synthetic", 0.5, 0, only=("cosine_tfidf",))["cosine_tfidf"]
    from sklearn.metrics import roc_auc_score

    from ptum_hf.data.splits import ctr_splits

    data = ctx.data("synthetic")
    test = ctr_splits(data, 0.5, 0)[2]
    assert result["auc"] == pytest.approx(roc_auc_score(np.asarray(test["label"]), cosine_scores(data, test, 3)))


def test_tables_are_written_without_matplotlib(quick_run, tmp_path, monkeypatch, capsys):
    out, _ = quick_run
    shutil.copytree(out / "raw", tmp_path / "raw")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    main(["--quick", "--output_dir", str(tmp_path), "--experiments", "none"])
    skipped = [line for line in capsys.readouterr().out.splitlines() if "plots skipped" in line]
    assert len(skipped) == 1 and "pip install ptum-hf[plots]" in skipped[0]
    assert (tmp_path / "table2.md").read_text().split("\n", 2)[2] == (out / "table2.md").read_text().split("\n", 2)[2]
    assert not list(tmp_path.glob("*.png"))


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        build_settings(parse_args(["--ratios", "0,1"]))
    with pytest.raises(SystemExit):
        build_settings(parse_args(["--presets", "nope"]))
    with pytest.raises(SystemExit):
        main(["--quick", "--experiments", "table9"])
    settings = build_settings(parse_args(["--presets", "hsa,bert4rec", "--ratios", "0.2,1.0", "--repeats", "3"]))
    assert settings.demographic_presets == ("hsa",) and settings.ctr_presets == ("bert4rec",)
    assert settings.ratios == (0.2, 1.0) and settings.repeats == 3
    with pytest.raises(SystemExit, match="variants must be among"):
        build_settings(parse_args(["--variants", "ptum_finetune,finetune"]))
    assert build_settings(parse_args(["--variants", "scratch"])).variants == ("scratch",)
    with pytest.raises(SystemExit, match="max_behaviors must be >= 2"):
        build_settings(parse_args(["--max_behaviors", "1"]))
    settings = build_settings(parse_args(["--max_behaviors", "200", "--user_model_learning_rate", "1e-4"]))
    assert settings.history_length == 200 and settings.model_overrides["max_behaviors"] == 200
    assert settings.model_label("hsa") == "hsa [200 behaviors] [user lr 0.0001]"


def test_defaults_are_the_recipe_that_trains_and_labels_name_departures():
    settings = build_settings(parse_args([]))
    assert settings.classifier_layer_norm and settings.user_model_learning_rate == 1e-3
    assert (settings.finetune_epochs, settings.scale_finetune_epochs) == (40, 5)
    assert build_settings(parse_args(["--scale_finetune_epochs", "8"])).scale_finetune_epochs == 8
    assert settings.model_label("hsa") == "hsa" and settings.model_label("bert4rec") == "bert4rec"
    settings = build_settings(parse_args(["--no-classifier_layer_norm", "--user_model_learning_rate", "0"]))
    assert not settings.classifier_layer_norm and settings.user_model_learning_rate is None
    assert settings.model_label("hsa") == "hsa (no LN head) [one lr]"
    assert settings.model_label("gru4rec") == "gru4rec [one lr]"  # no demographic head to name
    settings = build_settings(parse_args(["--ctr_ad_prior"]))
    assert settings.model_label("gru4rec") == "gru4rec (ad prior)" and settings.model_label("hsa") == "hsa"
    settings = build_settings(
        parse_args(["--scale_labeled", "100,500", "--ctr_repeats", "4", "--ctr_eval_samples", "0"])
    )
    assert settings.scale_labeled == (100, 500) and settings.ctr_repeats == 4 and settings.ctr_eval_samples is None
    with pytest.raises(SystemExit, match="scale_labeled must be"):
        build_settings(parse_args(["--scale_labeled", "200,many"]))
    with pytest.raises(SystemExit, match="ctr_repeats"):
        build_settings(parse_args(["--ctr_repeats", "0"]))
    # The linear models (baselines, probe) run over more splits than the fine-tunes, and never over fewer.
    assert (settings.repeats, settings.linear_splits) == (5, 20)
    assert build_settings(parse_args(["--repeats", "30"])).linear_splits == 30
    assert build_settings(parse_args(["--linear_repeats", "3"])).linear_splits == 5
    assert build_settings(parse_args(["--quick"])).linear_splits == 1
    with pytest.raises(SystemExit, match="linear_repeats must be >= 1"):
        build_settings(parse_args(["--linear_repeats", "0"]))
    settings = build_settings(parse_args(["--ctr_user_id_buckets", "4096", "--ctr_ad_id_bias"]))
    assert settings.model_label("gru4rec") == "gru4rec (ad id bias) (user id bias 4096) (id biases fitted)"
    unfitted = build_settings(parse_args(["--ctr_user_id_buckets", "4096", "--no-ctr_fit_id_biases"]))
    assert unfitted.model_label("gru4rec") == "gru4rec (user id bias 4096)"
    fixed = build_settings(parse_args(["--ctr_user_id_buckets", "4096", "--ctr_id_bias_l2", "1"]))
    assert fixed.model_label("gru4rec") == "gru4rec (user id bias 4096) (id biases fitted) (id bias l2 1)"
    kept = build_settings(parse_args(["--ctr_user_id_buckets", "4096", "--keep_fitted_start"]))
    assert kept.model_label("gru4rec") == "gru4rec (user id bias 4096) (id biases fitted) (start kept if better)"
    assert kept.model_label("hsa") == "hsa"  # nothing fitted, nothing kept
    with pytest.raises(SystemExit, match="ctr_id_bias_l2 must be a finite number > 0"):
        build_settings(parse_args(["--ctr_id_bias_l2", "0"]))
    with pytest.raises(SystemExit, match="ctr_id_bias_l2 has no effect"):
        build_settings(parse_args(["--ctr_id_bias_l2", "1", "--no-ctr_fit_id_biases"]))
    for bad in ("-1", "10000001"):
        with pytest.raises(SystemExit, match=r"ctr_user_id_buckets must be in \[0, 10000000\]"):
            build_settings(parse_args(["--ctr_user_id_buckets", bad]))


def test_each_task_and_dataset_runs_its_measured_defaults_and_the_command_line_wins():
    settings = build_settings(parse_args([]))
    demographics = settings.for_cell("demographics", MOVIELENS)
    wanted = MEASURED_DEFAULTS[("demographics", MOVIELENS)]
    assert {name: getattr(demographics, name) for name in wanted} == wanted
    assert demographics.model_overrides["use_bag"] and demographics.history_length == wanted["max_behaviors"]
    assert demographics.model_label("hsa") == (
        "hsa [items recipe: bag prediction, ids, attention pooling] [800 behaviors] (head fitted) "
        "[PT 300 epochs, batch 128]"
    )
    ctr = settings.for_cell("ctr", MOVIELENS)
    assert ctr.model_overrides["behavior_id_buckets"] == 65536 and not ctr.model_overrides.get("use_bag")
    assert ctr.model_label("gru4rec") == (
        "gru4rec (ad id bias) (user id bias 65536) (id biases fitted) (behavior_id_buckets=65536)"
    )
    for paper in (
        settings.for_cell("demographics", SYNTHETIC),
        settings.for_cell("ctr", SYNTHETIC),
        settings.for_cell("demographics", MOVIELENS, measured=False),  # the ablation and the sweeps
        build_settings(parse_args(["--no-measured_defaults"])).for_cell("ctr", MOVIELENS),
    ):
        assert (paper.recipe, paper.pretrain_epochs, paper.pretrain_batch_size) == ("paper", 10, 32)
        assert (paper.ctr_ad_id_bias, paper.ctr_user_id_buckets, paper.config_overrides) == (False, 0, {})
        assert paper.model_label("hsa") == "hsa" and paper.model_label("gru4rec") == "gru4rec"
        assert paper.fit_head is False
    # The command line wins field by field; its config overrides win over the measured ones.
    given = ["--pretrain_epochs", "50", "--no-ctr_ad_id_bias", "--config_overrides", '{"behavior_id_buckets": 1024}']
    settings = build_settings(parse_args(given))
    demographics, ctr = settings.for_cell("demographics", MOVIELENS), settings.for_cell("ctr", MOVIELENS)
    assert (demographics.recipe, demographics.pretrain_epochs, demographics.pretrain_batch_size) == ("items", 50, 128)
    unfitted = build_settings(parse_args(["--no-fit_head"])).for_cell("demographics", MOVIELENS)
    assert unfitted.fit_head is False and "(head fitted)" not in unfitted.model_label("hsa")
    assert "(head fitted)" in build_settings(parse_args(["--fit_head"])).model_label("hsa")
    assert ctr.model_overrides["behavior_id_buckets"] == 1024 and not ctr.ctr_ad_id_bias
    assert ctr.pretrain_epochs == 50 and ctr.ctr_user_id_buckets == 65536
    # Another recipe given replaces a measured one with the length and history chosen for it; the same one keeps them.
    recipe = build_settings(parse_args(["--recipe", "paper"])).for_cell("demographics", MOVIELENS)
    # ... but not the fitted head, which is not part of a recipe
    assert recipe.model_label("hsa") == "hsa (head fitted)" and recipe.history_length == 50
    same = build_settings(parse_args(["--recipe", "items"])).for_cell("demographics", MOVIELENS)
    assert same.model_label("hsa") == build_settings(parse_args([])).for_cell("demographics", MOVIELENS).model_label(
        "hsa"
    )
    with pytest.raises(ValueError, match="already those of"):
        same.for_cell("ctr", MOVIELENS)
    # The length that applies is named: steps where given, and the CTR fine-tuning steps.
    settings = build_settings(parse_args(["--pretrain_max_steps", "5", "--ctr_max_steps", "1200"]))
    assert settings.model_label("hsa") == "hsa [PT 5 steps, batch 32]"
    assert settings.model_label("gru4rec") == "gru4rec [PT 5 steps, batch 32] [FT 1200 steps]"
    # The scale setting fixes its own steps: they name its models, not the epochs or steps of the others.
    assert settings.model_label("hsa", settings.scale_pretrain_steps) == "hsa"
    assert build_settings(parse_args(["--pretrain_epochs", "20"])).model_label("hsa", 1500) == "hsa"
    assert settings.model_label("hsa", 500) == "hsa [PT 500 steps, batch 32]"


def _cell_settings(ctx, name):
    return getattr(ctx.settings, name)


def test_planned_jobs_run_under_their_cells_settings(tmp_path, monkeypatch):
    settings = build_settings(parse_args(["--presets", "hsa,gru4rec", "--sweep_data", "movielens"]))
    ctx = Context(settings, tmp_path, tmp_path / "work", quick=False)
    for experiment in ("baselines", "table2", "probe", "table3", "ablation", "lambda"):
        experiments.RUNNERS[experiment](ctx)  # planning reads no data: nothing here needs MovieLens on disk
    by_kind = {}
    for job in ctx.jobs:
        by_kind.setdefault((job.experiment, job.function.__name__), []).append(job)
    (table2_pretraining,) = by_kind[("table2", "pretrain_run")]  # the probe shares table2's pre-training
    assert ("probe", "pretrain_run") not in by_kind and by_kind[("probe", "probe_run")][0].after is table2_pretraining
    # The probe is named by its pre-training: table2's fine-tuning marks (a fitted head) are not the probe's.
    by_kind[("probe", "probe_run")][0].done([(("probe_ptum", 0.2, 0), {"accuracy": 0.5})], 0.0)
    ((probe,),) = [ctx.records.load("probe")]
    (table2_label,) = {job.settings.model_label("hsa") for job in by_kind[("table2", "finetune_run")]}
    assert probe["preset"] == table2_label.replace(" (head fitted)", "") != table2_label
    _, identity = table2_pretraining.args
    assert identity["overrides"]["use_bag"] and (identity["epochs"], identity["batch"]) == (300, 128)
    assert all(job.settings.recipe == "items" for job in by_kind[("table2", "finetune_run")])
    movielens = lambda experiment: [j for j in ctx.jobs if j.experiment == experiment and MOVIELENS in str(j.args)]  # noqa: E731
    ctr = [job for job in ctx.jobs if job.experiment == "table3"]
    assert movielens("table3") and all(job.settings.ctr_user_id_buckets == 65536 for job in movielens("table3"))
    assert all(job.settings.ctr_user_id_buckets == 0 for job in ctr if job not in movielens("table3"))
    # The baselines see the history of their cell's user models; the ablation and lambda study the paper's objective.
    histories = {job.args[0]: job.settings.history_length for job in by_kind[("baselines", "baseline_run")]}
    assert histories == {"demographics": 800, "ctr": 50}
    for experiment in ("ablation", "lambda"):
        assert movielens(experiment) and all(job.settings.recipe == "paper" for job in movielens(experiment))
    assert {"demographics/movielens-100k", "ctr/movielens-100k", "demographics/movielens-100k (paper's)"} <= set(
        ctx.cells
    )
    # What a job runs under: its settings, in this process and in a worker process alike.
    results = []
    ctx.jobs = [
        Job("x", _cell_settings, ("recipe",), lambda r, _: results.append(r), settings=job.settings)
        for job in (table2_pretraining, movielens("table3")[0])
    ]
    run_jobs(ctx)
    assert results == ["items", "paper"]
    monkeypatch.setitem(jobs._WORKER, "ctx", Context(settings, tmp_path, tmp_path / "work", quick=False))
    assert jobs._worker_call(_cell_settings, ("pretrain_epochs",), table2_pretraining.settings)[0] == 300


def test_a_cell_whose_models_would_be_refused_stops_the_run_before_it_starts(tmp_path):
    settings = build_settings(parse_args(["--ctr_ad_id_bias", "--ctr_datasets", "synthetic"]))
    ctx = Context(settings, tmp_path, tmp_path / "work", quick=False)
    with pytest.raises(SystemExit, match="ctr on synthetic: ad_id_bias needs behavior_id_buckets"):
        experiments.run_table3(ctx)
    assert not ctx.jobs
    given = [
        "--ctr_user_id_buckets",
        "16",
        "--config_overrides",
        '{"user_id_buckets": 8}',
        "--ctr_datasets",
        "synthetic",
    ]
    ctx = Context(build_settings(parse_args(given)), tmp_path, tmp_path / "work", quick=False)
    experiments.run_table3(ctx)  # a head option also in the config overrides is no error
    assert ctx.jobs


def test_a_missing_baseline_is_fitted_alone_and_as_in_the_full_fit(tmp_path):
    ctx = Context(build_settings(parse_args(["--quick"])), tmp_path, tmp_path / ".work", quick=True)
    full = baselines.demographic_baselines(ctx, "synthetic", 0.5, 0, recent=7)
    alone = baselines.demographic_baselines(ctx, "synthetic", 0.5, 0, recent=7, only=("lr_tfidf_last7",))
    assert set(alone) == {"majority", "lr_tfidf_last7"} and alone["lr_tfidf_last7"] == full["lr_tfidf_last7"]
    assert set(full) == {"majority", "lr_tfidf", "lr_tfidf_last7", "lr_tfidf_words", "svd_lr"}


def test_svd_baseline_learns_from_every_user_without_labels(tmp_path, monkeypatch):
    from sklearn.decomposition import TruncatedSVD

    fitted_rows = []
    fit = TruncatedSVD.fit
    monkeypatch.setattr(
        TruncatedSVD, "fit", lambda self, x, y=None: fitted_rows.append((x.shape[0], y)) or fit(self, x)
    )
    ctx = Context(build_settings(parse_args(["--quick"])), tmp_path, tmp_path / ".work", quick=True)
    result = baselines.demographic_baselines(ctx, "synthetic", 0.5, 0)
    users = len(ctx.data("synthetic").users)
    assert fitted_rows and all(rows == users and y is None for rows, y in fitted_rows)  # all users, no labels
    assert len(fitted_rows) == len(baselines.SVD_RANKS)
    svd = result["svd_lr"]
    assert {svd["age_rank"], svd["gender_rank"]} <= set(baselines.SVD_RANKS)  # chosen on the validation users
    assert 0.0 <= svd["gender_auc"] <= 1.0 and 0.0 <= svd["age_macro_f1"] <= 1.0


def test_user_models_are_paired_with_the_svd_baseline(quick_run):
    out, _ = quick_run
    pairs = {row[3] for row in table_rows((out / "table2.md").read_text().split("### Paired")[1])}
    assert "PTUM finetune − LR, SVD of the TF-IDF bag on all users (no labels)" in pairs
    probe = {(row[2], row[4]) for row in table_rows((out / "probe.md").read_text().split("### Paired")[1])}
    assert (
        baselines.PROBE_SETTING,
        "LR on frozen PTUM user vectors − LR, SVD of the TF-IDF bag on all users (no labels)",
    ) in probe


def test_the_probe_is_fitted_as_svd_lr_is(tmp_path, monkeypatch):
    """The probe and SVD + LR go through one fit (`fit_heads`): given SVD + LR's own features, the probe's L2 option
    is exactly SVD + LR's input and scores exactly what SVD + LR scores; the other option standardises."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ptum_hf.data.splits import demographics_splits

    monkeypatch.setattr(baselines, "SVD_RANKS", (8,))
    fit_heads, calls = baselines.fit_heads, []
    monkeypatch.setattr(
        baselines, "fit_heads", lambda options, *parts: calls.append(options) or fit_heads(options, *parts)
    )
    ctx = Context(build_settings(parse_args(["--quick"])), tmp_path, tmp_path / ".work", quick=True)
    data = ctx.data("synthetic")
    svd_lr = baselines.demographic_baselines(ctx, "synthetic", 0.5, 0)["svd_lr"]
    bags = [" ".join(f"i{b}" for b in ids) for ids in data.users["behavior_ids"]]
    matrix = TfidfVectorizer(token_pattern=r"\S+", sublinear_tf=True).fit_transform(bags)
    vectors = TruncatedSVD(8, random_state=0).fit(matrix).transform(matrix) * 3.0  # normalised away by the L2 option
    probe = baselines.probe_scores(vectors, data, 0.5, 0)
    ((_, svd_features),) = calls[0]["svd_lr"]
    choices = {choice["standardised"]: x for choice, x in calls[1]["probe"]}
    assert set(choices) == {0, 1} and probe["age_standardised"] in (0, 1)
    for ours, theirs in zip(choices[0], svd_features):
        np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(choices[1][0].mean(0), 0, atol=1e-9)  # standardised on the training users
    parts = demographics_splits(data, baselines.DEMOGRAPHIC_HEADS, 0.5, 0)
    l2_only = fit_heads({"probe": [({}, choices[0])]}, *parts)["probe"]
    for metric in ("age_macro_f1", "gender_auc", "age_C", "gender_C"):
        assert l2_only[metric] == pytest.approx(svd_lr[metric]), metric


def test_config_overrides_reach_the_model_and_its_name():
    settings = build_settings(parse_args(["--config_overrides", '{"use_bag": true, "bag_dropout": 0.3}']))
    assert settings.model_overrides["use_bag"] is True and settings.model_overrides["bag_dropout"] == 0.3
    assert settings.model_label("hsa") == "hsa (bag_dropout=0.3, use_bag=True)"
    for bad, message in (('{"use_bags": true}', "use_bags"), ("[1]", "JSON object"), ("{", "not valid JSON")):
        with pytest.raises(SystemExit, match=message):
            build_settings(parse_args(["--config_overrides", bad]))
