"""The experiments: each plans the jobs (pre-trainings, fine-tunes, baselines, probes) it still needs, by the keys
of the records already written; `run_jobs` runs them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .baselines import PROBE_SETTING, ctr_baselines, demographic_baselines, probe_scores, user_vectors
from .jobs import Context, Job, log, quiet
from .settings import MOVIELENS, SYNTHETIC, VARIANTS
from .training import finetune_run, pretraining_job


def run_grid(
    ctx: Context,
    experiment: str,
    task: str,
    dataset: str,
    preset: str,
    setting_name: str,
    setting: dict,
    variants,
    ratios,
    num_users=None,
    max_steps=None,
    label_fraction_of=None,
    repeats=None,
    measured=True,
):
    """Plan the pre-training (once; the from-scratch runs use its tokenizer and config too) and every (variant,
    ratio, repeat) fine-tune not yet recorded, under the settings of (task, dataset) (`Settings.for_cell`; `measured`
    False: the paper's where unset)."""
    dataset = ctx.data_name(dataset)
    ctx = ctx.for_cell(task, dataset, measured)
    s = ctx.settings
    check_cell(s, task, dataset)
    repeats = s.repeats if repeats is None else min(s.repeats, repeats)
    label = s.model_label(preset, max_steps)
    done = ctx.records.done(experiment)
    todo = [
        (v, r, k)
        for r in ratios
        for k in range(repeats)
        for v in variants
        if (experiment, task, dataset, label, setting_name, v, r, k) not in done
    ]
    todo = [(v, r, k) for v, r, k in todo if v in s.variants]
    if not todo:
        return
    model_dir, pretraining = pretraining_job(ctx, experiment, dataset, preset, setting, num_users, max_steps)
    for variant, ratio, repeat in todo:

        def record(metrics, seconds, variant=variant, ratio=ratio, repeat=repeat):
            ctx.records.add_run(
                (experiment, task, dataset, label, setting_name, variant, ratio, repeat),
                metrics,
                seconds,
                size=s.size,
                max_behaviors=s.history_length,
            )
            main_metric = metrics.get("accuracy", metrics.get("auc"))
            log(
                f"{experiment} {dataset} {label} {setting_name} {variant} ratio={ratio} repeat={repeat}: "
                f"{'accuracy' if task == 'demographics' else 'auc'}={main_metric:.4f} ({seconds:.0f}s)"
            )

        fraction = label_fraction_of(ratio) if label_fraction_of else None
        ctx.plan(
            Job(
                experiment,
                finetune_run,
                (task, dataset, model_dir, variant, ratio, repeat, fraction),
                record,
                after=pretraining,
            )
        )


def check_cell(settings, task: str, dataset: str):
    """Stop before anything runs if the models of `task` on `dataset` would be refused (e.g. an ad id bias given for
    every dataset where one has no ids)."""
    from ..configuration_ptum import PTUMConfig

    try:
        PTUMConfig(**{**settings.model_overrides, **(settings.ctr_head if task == "ctr" else {})})
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{task} on {dataset}: {error}") from None


def plan_baselines(ctx: Context, experiment: str, function, args: tuple):
    """A job computing `function(ctx, task, dataset, ratio, repeat, ...)`: {variant: metrics}, recorded with preset
    and setting "-"; `ctx` is the cell's (the history its user models see)."""
    task, dataset, ratio, repeat = args[:4]

    def record(results, seconds):
        for variant, metrics in results.items():
            ctx.records.add_run((experiment, task, dataset, "-", "-", variant, ratio, repeat), metrics, seconds)
        log(
            f"{experiment} {task} {dataset} ratio={ratio} repeat={repeat}: "
            + ", ".join(f"{v} {m.get('accuracy', m.get('auc')):.4f}" for v, m in results.items())
        )

    ctx.plan(Job(experiment, function, args, record))


def run_baselines(ctx: Context):
    done = ctx.records.done("baselines")
    jobs = [("demographics", ctx.data_name(MOVIELENS))] + [("ctr", ctx.data_name(d)) for d in ctx.settings.ctr_datasets]
    for task, dataset in jobs:
        cell = ctx.for_cell(task, dataset)
        s = cell.settings
        for ratio in s.ratios:
            for repeat in range(s.linear_splits if task == "demographics" else s.repeats):
                wanted = (
                    ("majority", "lr_tfidf", "lr_tfidf_words", f"lr_tfidf_last{s.history_length}", "svd_lr")
                    if task == "demographics"
                    else ("item_mean", "lr_user_item", "lr_mf", "cosine_tfidf")
                )
                missing = tuple(
                    v for v in wanted if ("baselines", task, dataset, "-", "-", v, ratio, repeat) not in done
                )
                if missing:
                    plan_baselines(cell, "baselines", baseline_run, (task, dataset, ratio, repeat, missing))


def baseline_run(ctx: Context, task: str, dataset: str, ratio: float, repeat: int, missing: tuple) -> dict:
    if task == "demographics":
        results = demographic_baselines(ctx, dataset, ratio, repeat, recent=ctx.settings.history_length, only=missing)
    else:
        results = ctr_baselines(ctx, dataset, ratio, repeat, only=missing if len(missing) == 1 else None)
    return {v: m for v, m in results.items() if v in missing}


def run_table2(ctx: Context):
    s = ctx.settings
    for preset in s.demographic_presets:
        run_grid(ctx, "table2", "demographics", MOVIELENS, preset, "mbp+nbp", {}, tuple(VARIANTS), s.ratios)


def run_table3(ctx: Context):
    s = ctx.settings
    for dataset in s.ctr_datasets:
        for preset in s.ctr_presets:
            run_grid(
                ctx, "table3", "ctr", dataset, preset, "mbp+nbp", {}, tuple(VARIANTS), s.ratios, repeats=s.ctr_repeats
            )


ABLATION = {"mbp only": {"use_nbp": False}, "nbp only": {"use_mbp": False}, "mbp+nbp": {}}


def run_ablation(ctx: Context):
    s = ctx.settings
    ratio = (s.ablation_ratio,)
    # CTR: on the synthetic task with the scale setting (where pre-training has something to give), else the first.
    ctr_dataset = SYNTHETIC if s.sweep_data == "scale" and SYNTHETIC in s.ctr_datasets else s.ctr_datasets[0]
    jobs = [("demographics", MOVIELENS, "hsa"), ("ctr", ctr_dataset, "bert4rec" if not ctx.quick else s.ctr_presets[0])]
    for task, dataset, preset in [job for job in jobs if job[0] in s.ablation_tasks]:
        grid = sweep_grid(ctx) if task == "demographics" else dict(dataset=dataset, ratios=ratio, repeats=s.ctr_repeats)
        common = dict(preset=preset, measured=False, **grid)
        run_grid(ctx, "ablation", task, setting_name="none", setting={}, variants=("scratch",), **common)
        for name, setting in ABLATION.items():
            run_grid(ctx, "ablation", task, setting_name=name, setting=setting, variants=("ptum_finetune",), **common)


def sweep_grid(ctx: Context) -> dict:
    """Dataset, ratios and pre-training size of the demographics sweeps: MovieLens at `ablation_ratio`, or the
    synthetic `scale` setting (`scale_users` pre-train, `scale_labeled` of them labeled)."""
    s = ctx.settings
    if s.sweep_data == "movielens":
        return dict(dataset=MOVIELENS, ratios=(s.ablation_ratio,))
    return scale_grid(ctx, s.scale_labeled[0])


def scale_grid(ctx: Context, labeled: int) -> dict:
    """The synthetic `scale` setting: every user pre-trains; `labeled` of the training users carry labels."""
    s = ctx.settings
    fraction = labeled / int(round(0.8 * s.scale_users))
    return dict(
        dataset=SYNTHETIC,
        ratios=(labeled,),
        num_users=s.scale_users,
        max_steps=s.scale_pretrain_steps,
        label_fraction_of=lambda _: fraction,
    )


def run_lambda(ctx: Context):
    # lambda = 0 is the MBP-only objective: it shares the ablation's "mbp only" pre-training instead of computing an
    # NBP loss that is multiplied by zero.
    run_sweep(
        ctx,
        "lambda",
        ctx.settings.lambdas,
        lambda value: f"lambda={value:g}",
        lambda value: {} if value == 1 else {"use_nbp": False} if value == 0 else {"nbp_weight": value},
    )


def run_k(ctx: Context):
    run_sweep(
        ctx, "k", ctx.settings.ks, lambda value: f"K={value}", lambda value: {} if value == 2 else {"num_next": value}
    )


def run_sweep(ctx: Context, experiment: str, values, name, setting_of):
    """PTUM finetune on demographics (HSA; `sweep_grid`) for each value of one pre-training setting; the default
    value's setting is {}, so it shares the main pre-training."""
    for value in values:
        run_grid(
            ctx,
            experiment,
            "demographics",
            preset="hsa",
            setting_name=name(value),
            setting=setting_of(value),
            variants=("ptum_finetune",),
            repeats=ctx.settings.sweep_repeats,
            measured=False,
            **sweep_grid(ctx),
        )


def run_scale(ctx: Context):
    """Synthetic: every user pre-trains; each of `scale_labeled` (a count) of them carry labels for training."""
    s = ctx.settings
    done = ctx.records.done("scale")
    cell = ctx.for_cell("demographics", SYNTHETIC)
    for labeled in s.scale_labeled:
        grid = scale_grid(ctx, labeled)
        for repeat in range(s.repeats):
            if ("scale", "demographics", SYNTHETIC, "-", "-", "lr_tfidf_words", labeled, repeat) not in done:
                plan_baselines(
                    cell,
                    "scale",
                    scale_baseline_run,
                    ("demographics", SYNTHETIC, labeled, repeat, grid["label_fraction_of"](None)),
                )
        # The pre-training reads `scale_users` synthetic users; the fine-tune loads the same users.
        run_grid(
            ctx,
            "scale",
            "demographics",
            preset="hsa",
            setting_name="mbp+nbp",
            setting={},
            variants=tuple(VARIANTS),
            **grid,
        )


def scale_baseline_run(ctx: Context, task: str, dataset: str, labeled: int, repeat: int, fraction: float) -> dict:
    return demographic_baselines(ctx, dataset, labeled, repeat, label_fraction=fraction)


def run_probe(ctx: Context):
    """Is the pre-trained user vector informative? LR on frozen vectors of the HSA model pre-trained for table2 vs the
    same architecture with random weights, on the same splits as the baselines."""
    dataset = ctx.data_name(MOVIELENS)
    ctx = ctx.for_cell("demographics", dataset)  # the vectors of table2's HSA pre-training
    s = ctx.settings
    label = replace(s, fit_head=False).model_label("hsa")  # the probe fits its own LR: no fine-tuning mark
    done = ctx.records.done("probe")
    todo = [
        (v, r, k)
        for v in ("probe_ptum", "probe_random")
        for r in s.ratios
        for k in range(s.linear_splits)
        if ("probe", "demographics", dataset, label, PROBE_SETTING, v, r, k) not in done
    ]
    if not todo:
        return
    model_dir, pretraining = pretraining_job(ctx, "probe", dataset, "hsa", {})

    def record(results, _):
        for (variant, ratio, repeat), metrics in results:
            ctx.records.add_run(
                ("probe", "demographics", dataset, label, PROBE_SETTING, variant, ratio, repeat),
                metrics,
                0,
                size=s.size,
                max_behaviors=s.history_length,
            )
            log(f"probe {label} {variant} ratio={ratio} repeat={repeat}: accuracy={metrics['accuracy']:.4f}")

    ctx.plan(Job("probe", probe_run, (dataset, model_dir, todo), record, after=pretraining))


def probe_run(ctx: Context, dataset: str, model_dir: Path, todo: list) -> list:
    data = ctx.data(dataset)
    results = []
    for variant, random_init in (("probe_ptum", False), ("probe_random", True)):
        with quiet():
            vectors = user_vectors(model_dir, data, random_init)
        results += [((v, r, k), probe_scores(vectors, data, r, k)) for v, r, k in todo if v == variant]
    return results


RUNNERS = {
    "baselines": run_baselines,
    "table2": run_table2,
    "table3": run_table3,
    "ablation": run_ablation,
    "lambda": run_lambda,
    "k": run_k,
    "scale": run_scale,
    "probe": run_probe,
}
