"""The Markdown tables, rebuilt from the records: mean ± std per cell, and paired differences between variants on
the same splits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .baselines import PROBE_SETTING
from .jobs import Context
from .settings import VARIANT_NAMES

DEMOGRAPHIC_METRICS = ("age_accuracy", "age_macro_f1", "gender_accuracy", "gender_macro_f1", "gender_auc")
CTR_METRICS = ("auc", "ap")

PROBE_NOTE = (
    f"Setting `{PROBE_SETTING}`: LR fitted exactly as SVD + LR is (C in 0.1..30 chosen on the validation users), on "
    "the vectors L2-normalised or standardised, whichever validates better. `L2, as SVD+LR`: L2-normalised only. "
    "`mbp+nbp`: the records made before either, standardised, C in 0.001..10."
)
PROBE_COMPARISONS = [("probe_ptum", "probe_random"), ("probe_ptum", "lr_tfidf"), ("probe_ptum", "svd_lr")]
DEMOGRAPHIC_COMPARISONS = [
    ("ptum_finetune", "scratch"),
    ("ptum_frozen", "scratch"),
    ("ptum_finetune", "lr_tfidf"),
    ("scratch", "lr_tfidf"),
    ("ptum_finetune", "lr_tfidf_same"),
    ("scratch", "lr_tfidf_same"),
    ("ptum_finetune", "svd_lr"),
    ("scratch", "svd_lr"),
]
SCALE_COMPARISONS = [
    ("ptum_finetune", "scratch"),
    ("ptum_frozen", "scratch"),
    ("ptum_finetune", "lr_tfidf_words"),
    ("scratch", "lr_tfidf_words"),
    ("ptum_finetune", "lr_tfidf"),
    ("ptum_finetune", "svd_lr"),
]
CTR_COMPARISONS = [
    ("ptum_finetune", "scratch"),
    ("ptum_frozen", "scratch"),
    ("ptum_finetune", "lr_user_item"),
    ("ptum_finetune", "lr_mf"),
    ("ptum_finetune", "item_mean"),
]


class Cell(dict):
    """{variant: {repeat: metrics}} of one table cell, and `max_behaviors`: how many recent behaviors its user models
    saw (None for baseline cells, whose records have no such field)."""

    def __init__(self, max_behaviors: int | None = None):
        super().__init__()
        self.max_behaviors = max_behaviors


def write_study(out: Path, lines: list[str], settings: dict, results: list) -> str:
    """A study script's table (`results.md`) and records (`results.json`, with its settings), each written under a
    temporary name, then renamed; returns the table."""
    report = "\n".join(lines)
    atomic_write_text(Path(out) / "results.md", report + "\n")
    atomic_write_text(Path(out) / "results.json", json.dumps({"settings": settings, "results": results}, indent=2))
    return report


def group(records) -> dict[tuple, Cell]:
    """{(task, dataset, preset, setting, ratio): Cell}. A cell's `max_behaviors` is its records' own (None where they
    disagree)."""
    out = {}
    for r in records:
        key = (r["task"], r["dataset"], r["preset"], r["setting"], r["ratio"])
        cell = out.get(key)
        if cell is None:
            cell = out[key] = Cell(r.get("max_behaviors"))
        elif cell.max_behaviors != r.get("max_behaviors"):
            cell.max_behaviors = None
        cell.setdefault(r["variant"], {})[r["repeat"]] = r["metrics"]
    return out


def baseline_cells(ctx: Context) -> dict[tuple, Cell]:
    return group(ctx.records.load("baselines"))


def mean_std(values) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def paired(a: dict, b: dict, metric: str) -> str:
    """Mean ± std of a - b over the repeats both have, and how many are > 0."""
    common = sorted(set(a) & set(b))
    diffs = [
        a[r][metric] - b[r][metric]
        for r in common
        if metric in a[r] and metric in b[r] and not math.isnan(a[r][metric]) and not math.isnan(b[r][metric])
    ]
    if not diffs:
        return "n/a"
    positive = sum(d > 0 for d in diffs)
    spread = f" ± {np.std(diffs, ddof=1):.3f}" if len(diffs) > 1 else ""
    return f"{np.mean(diffs):+.3f}{spread} ({positive}/{len(diffs)} > 0)"


def variant_name(variant: str) -> str:
    if variant.startswith("lr_tfidf_last"):
        return f"LR, TF-IDF bag of the last {variant[len('lr_tfidf_last') :]} items"
    return VARIANT_NAMES.get(variant, variant)


def ratio_label(ratio) -> str:
    return f"{ratio:.0%}" if isinstance(ratio, float) and ratio <= 1.0 else f"{ratio} users"


def with_baselines(cells, baselines=None):
    """Each cell's key and its variants, joined by the baseline rows of the same task, dataset and ratio.

    Of the LR baselines on a user's last N items, only the one with the cell's own N (`max_behaviors`) joins, as
    `lr_tfidf_same`."""
    for key, variants in sorted(cells.items(), key=lambda kv: str(kv[0])):
        rows = dict(variants)
        history = getattr(variants, "max_behaviors", None)
        same = f"lr_tfidf_last{history}" if history is not None else None
        for (b_task, b_dataset, _, _, b_ratio), b_variants in (baselines or {}).items():
            if (b_task, b_dataset, b_ratio) == (key[0], key[1], key[4]):
                rows.update(
                    {
                        ("lr_tfidf_same" if v == same else v): m
                        for v, m in b_variants.items()
                        if not v.startswith("lr_tfidf_last") or v == same
                    }
                )
        yield key, rows


def variant_table(cells, metrics, baselines=None, include_setting=False) -> list[str]:
    """Rows: (dataset, preset, [setting], ratio, variant, n, metrics...)."""
    head = ["dataset", "model"] + (["setting"] if include_setting else []) + ["labels", "variant", "n"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (_, dataset, preset, setting, ratio), rows in with_baselines(cells, baselines):
        for variant, by_repeat in rows.items():
            values = [mean_std([m.get(metric, math.nan) for m in by_repeat.values()]) for metric in metrics]
            cells_ = (
                [dataset, preset]
                + ([setting] if include_setting else [])
                + [ratio_label(ratio), variant_name(variant), str(len(by_repeat))]
            )
            lines.append("| " + " | ".join(cells_ + values) + " |")
    return lines


def paired_table(cells, metrics, comparisons, baselines=None, include_setting=False) -> list[str]:
    head = ["dataset", "model"] + (["setting"] if include_setting else []) + ["labels", "comparison"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (_, dataset, preset, setting, ratio), rows in with_baselines(cells, baselines):
        for a, b in comparisons:
            if a in rows and b in rows:
                label = f"{variant_name(a)} − {variant_name(b)}"
                first = [dataset, preset] + ([setting] if include_setting else []) + [ratio_label(ratio), label]
                lines.append("| " + " | ".join(first + [paired(rows[a], rows[b], m) for m in metrics]) + " |")
    return lines


def ablation_paired(cells, metrics) -> list[str]:
    """Each pre-training setting's PTUM finetune minus the from-scratch run (setting `none`) on the same splits."""
    lines = [
        "| dataset | model | labels | setting − none | " + " | ".join(metrics) + " |",
        "|" + "---|" * (4 + len(metrics)),
    ]
    for (task, dataset, preset, setting, ratio), variants in sorted(cells.items(), key=lambda kv: str(kv[0])):
        if setting == "none" or "ptum_finetune" not in variants:
            continue
        none = cells.get((task, dataset, preset, "none", ratio), {}).get("scratch")
        if none:
            lines.append(
                "| "
                + " | ".join(
                    [dataset, preset, ratio_label(ratio), setting]
                    + [paired(variants["ptum_finetune"], none, m) for m in metrics]
                )
                + " |"
            )
    return lines


def write_tables(ctx: Context, header: str) -> dict[str, list[str]]:
    out = ctx.output_dir
    base = baseline_cells(ctx)
    notes = (
        "Mean ± sample std over the repeats (n); repeat r = split seed r. Paired differences: per split, "
        "then mean ± std and the number of splits where it is > 0, over the splits both rows have (the MovieLens "
        "demographic baselines run over more splits than the fine-tunes: a difference of two means shown here "
        "need not equal the paired one)."
    )
    sections = {}
    b_demo = {k: v for k, v in base.items() if k[0] == "demographics"}
    b_ctr = {k: v for k, v in base.items() if k[0] == "ctr"}
    if base:
        sections["baselines"] = (
            ["## Baselines on the user models' splits", "", notes, "", "### Demographics", ""]
            + variant_table(b_demo, DEMOGRAPHIC_METRICS)
            + ["", "### CTR", ""]
            + variant_table(b_ctr, CTR_METRICS)
        )
    for name, title, metrics, comparisons in (
        ("table2", "Table 2 analogue: demographics", DEMOGRAPHIC_METRICS, DEMOGRAPHIC_COMPARISONS),
        ("table3", "Table 3 analogue: CTR", CTR_METRICS, CTR_COMPARISONS),
    ):
        cells = group(ctx.records.load(name))
        if cells:
            b = b_demo if name == "table2" else b_ctr
            sections[name] = (
                [f"## {title}", "", notes, ""]
                + variant_table(cells, metrics, b)
                + ["", "### Paired differences", ""]
                + paired_table(cells, metrics, comparisons, b)
            )
    for name, title in (
        ("ablation", "Fig. 3 analogue: pre-training tasks"),
        ("lambda", "Fig. 4 analogue: lambda"),
        ("k", "Fig. 5 analogue: K"),
    ):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        lines = [f"## {title}", "", notes, ""]
        for task, metrics in (("demographics", DEMOGRAPHIC_METRICS), ("ctr", CTR_METRICS)):
            part = {k: v for k, v in cells.items() if k[0] == task}
            if part:
                lines += variant_table(part, metrics, include_setting=True) + [""]
                if name == "ablation":
                    lines += ablation_paired(part, metrics) + [""]
        sections[name] = lines
    cells = group(ctx.records.load("probe"))
    if cells:
        sections["probe"] = (
            ["## Linear probe: LR on frozen user vectors", "", notes, "", PROBE_NOTE, ""]
            + variant_table(cells, DEMOGRAPHIC_METRICS, b_demo, include_setting=True)
            + ["", "### Paired differences", ""]
            + paired_table(cells, DEMOGRAPHIC_METRICS, PROBE_COMPARISONS, b_demo, include_setting=True)
        )
    cells = group(ctx.records.load("scale"))
    if cells:  # its baselines are recorded beside the models (preset "-"): join them as in table2
        b_scale = {k: v for k, v in cells.items() if k[2] == "-"}
        models = {k: v for k, v in cells.items() if k[2] != "-"} or b_scale
        sections["scale"] = (
            ["## Synthetic at scale", "", notes, ""]
            + variant_table(models, DEMOGRAPHIC_METRICS, b_scale if models is not b_scale else None)
            + ["", "### Paired differences", ""]
            + paired_table(models, DEMOGRAPHIC_METRICS, SCALE_COMPARISONS, b_scale)
        )
    for name, lines in sections.items():
        atomic_write_text(out / f"{name}.md", header + "\n".join(lines) + "\n")
    return sections
