"""The PNG plots, rebuilt from the records. matplotlib is the optional `plots` extra: without it the plots are
skipped (one log line), the tables are not."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .jobs import Context, log
from .report import baseline_cells, group, ratio_label, variant_name, with_baselines

BASELINE_VARIANTS = (
    "majority",
    "lr_tfidf",
    "lr_tfidf_words",
    "svd_lr",
    "item_mean",
    "lr_user_item",
    "lr_mf",
    "cosine_tfidf",
)


def plot_writer() -> Callable[[Context], list[Path]]:
    """`write_plots`, or where matplotlib is not installed a writer of nothing (said once, here)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("plots skipped: matplotlib is not installed (pip install ptum-hf[plots] gives them)")
        return lambda ctx: []
    return write_plots


def write_plots(ctx: Context) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    base = baseline_cells(ctx)

    def save(fig, name):
        path = ctx.output_dir / name
        try:
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format="png", dpi=plot_dpi(fig), bbox_inches="tight")
        finally:
            plt.close(fig)
        written.append(path)

    def series(by_repeat, metric):
        values = [m.get(metric, math.nan) for m in by_repeat.values()]
        values = [v for v in values if not math.isnan(v)]
        return (np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0) if values else (math.nan, 0.0)

    for name, metrics, task in (
        ("table2", ("age_accuracy", "gender_accuracy", "gender_auc"), "demographics"),
        ("table3", ("auc",), "ctr"),
    ):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        panels = sorted({(c[1], c[2]) for c in cells})
        fig, axes = plt.subplots(
            len(metrics), len(panels), figsize=(4.6 * len(panels), 3.6 * len(metrics)), squeeze=False
        )
        for column, (dataset, preset) in enumerate(panels):
            for row, metric in enumerate(metrics):
                ax = axes[row][column]
                ratios = sorted({c[4] for c in cells if c[1:3] == (dataset, preset)})
                variant_rows = {}
                for ratio in ratios:
                    key = (task, dataset, preset, "mbp+nbp", ratio)
                    _, cell = next(with_baselines({key: cells[key]}, base))
                    for variant, by_repeat in cell.items():
                        if variant == "item_mean" and task == "demographics":
                            continue
                        variant_rows.setdefault(variant, []).append((ratio, *series(by_repeat, metric)))
                for variant, points in variant_rows.items():
                    x, y, e = zip(*points)
                    style = "--" if variant in BASELINE_VARIANTS + ("lr_tfidf_same",) else "-"
                    ax.errorbar(x, y, yerr=e, marker="o", linestyle=style, capsize=3, label=variant_name(variant))
                ax.set_title(f"{preset}, {dataset}", fontsize=9)
                ax.set_xlabel("share of labeled training users")
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"{name}.png")

    for name, xlabel in (("ablation", "pre-training tasks"), ("lambda", "lambda (NBP weight)"), ("k", "K")):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        models = sorted({(c[0], c[1], c[2]) for c in cells})
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.4), squeeze=False)
        for ax, (task, dataset, preset) in zip(axes[0], models):
            metrics = ("age_accuracy", "gender_accuracy") if task == "demographics" else ("auc",)
            part = {c: v for c, v in cells.items() if c[:3] == (task, dataset, preset)}
            order = {"none": 0, "mbp only": 1, "nbp only": 2, "mbp+nbp": 3}
            keys = sorted(part, key=lambda c: order.get(c[3], 0) if name == "ablation" else float(c[3].split("=")[1]))
            labels = [c[3] for c in keys]
            for offset, metric in enumerate(metrics):
                points = [series(next(iter(part[c].values())), metric) for c in keys]
                y, e = zip(*points)
                if name == "ablation":
                    x = np.arange(len(keys)) + 0.35 * (offset - (len(metrics) - 1) / 2)
                    ax.bar(x, y, width=0.35, yerr=e, capsize=3, label=metric)
                    ax.set_xticks(np.arange(len(keys)), labels, rotation=15)
                else:
                    x = [float(label.split("=")[1]) for label in labels]
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=metric)
            if name == "ablation":
                lows = [v for c in keys for v in [series(next(iter(part[c].values())), m)[0] for m in metrics]]
                lows = [v for v in lows if not math.isnan(v)]
                if lows:
                    ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.05))
            ax.set_title(f"{preset}, {dataset}, {ratio_label(keys[0][4])} labels", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"{name}.png")
    return written


def plot_dpi(fig, dpi: float = 110, max_pixels: float = 3e6) -> float:
    """`dpi`, lowered for a figure of many panels (the studies' dozens of models) so that no plot passes `max_pixels`:
    the tables carry the numbers, and a plot kept in git should stay a few hundred KiB."""
    width, height = fig.get_size_inches()
    return min(dpi, (max_pixels / (width * height)) ** 0.5)
