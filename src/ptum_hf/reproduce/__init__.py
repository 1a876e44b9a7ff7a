"""Reproduce the PTUM paper's experiments (Wu et al., 2020) with this library's public API.

    ptum-hf reproduce --output_dir results                       # everything (110 min on 2 cores)
    ptum-hf reproduce --quick --output_dir /tmp/r                # tiny version (a test runs it)
    ptum-hf reproduce --experiments table2 --presets hsa --ratios 0.2,1.0 --repeats 3

Experiments (`--experiments`, comma separated):

- `table2`: demographics (age, 4 buckets; gender) on MovieLens-100K; presets HAN/HURA/HSA x {from scratch, PTUM no
  finetune, PTUM finetune} x label ratios; repeat r uses its own 80/10/10 user split (`split_seed=r`).
- `table3`: CTR on MovieLens-100K (rating >= 4, time split) and on the synthetic task; GRU4Rec/NativeCTR/BERT4Rec.
- `ablation`: pre-training tasks none / MBP only / NBP only / both, for HSA (demographics) and BERT4Rec (CTR).
- `lambda`, `k`: the NBP weight lambda and the number K of next behaviors (HSA, demographics). The ablation and
  these sweeps run in the synthetic `scale` setting (its first labeled count; the CTR ablation on the synthetic CTR
  task), where pre-training has something to give, or with `--sweep_data movielens` on MovieLens.
- `baselines`: majority class, logistic regression on TF-IDF bag-of-items, and on its truncated SVD fitted on every
  user without labels (demographics); item mean click rate and logistic regression on user and item one-hots (CTR);
  on exactly the splits the user models get.
- `scale`: synthetic, every user pre-trains (51,250) and 200 or 1,000 of the training users carry labels (250:1, 50:1).

Pre-training uses every user's behaviors and no labels, once per (dataset, preset, pre-training setting); the
fine-tunes reuse it. The experiments plan jobs (pre-trainings, fine-tunes, baselines, probes) and `run_jobs` runs
them, with `--jobs N` in N worker processes. Every job's test metrics are appended to
`<output_dir>/raw/<experiment>.jsonl` as soon as they exist, so an interrupted run continues where it stopped; the
Markdown tables (`<output_dir>/*.md`) and PNG plots are rebuilt from those records as each experiment finishes.
Differences between two variants are paired: the same split, the same labeled users, then mean +- std of the
per-split difference and how often it is positive.
"""

# One job per module: settings (what decides the numbers, the command line), jobs (records, the job runner and its
# worker processes), training (pre-training and fine-tune jobs), baselines (scikit-learn baselines, the probe),
# experiments (what each experiment plans), report (Markdown tables), plots (PNG plots), main (the entry point).
from .main import main

__all__ = ["main"]
