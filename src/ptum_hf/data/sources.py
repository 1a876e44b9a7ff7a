"""Built-in behavior datasets, one call away: `load_behavior_dataset("synthetic" | "movielens-100k" | "mind")`."""

from __future__ import annotations

from .mind import load_mind
from .movielens import load_movielens
from .synthetic import load_synthetic

SOURCES = {
    "synthetic": load_synthetic,
    "movielens-100k": load_movielens,
    "mind": load_mind,
}
ALIASES = {"ml-100k": "movielens-100k", "movielens": "movielens-100k", "movielens100k": "movielens-100k"}


def load_behavior_dataset(name: str = "synthetic", **kwargs):
    """
    Load a built-in source as a `BehaviorDataset` (with labels and a CTR task where the source has them).

    - `"synthetic"`: generated with planted structure (`num_users=5000`, `seed=0`, ... see `SyntheticConfig`;
      `streaming=True` gives an `IterableDataset`).
    - `"movielens-100k"`: MovieLens 100K from `path=` (GroupLens or RecBole layout; default: found under
      `$PTUM_HF_DATA` or `../shared/data`).
    - `"mind"`: a MIND directory `path=` with `news.tsv` and `behaviors.tsv`.

    Example:

    ```python
    >>> from ptum_hf.data import load_behavior_dataset
    >>> data = load_behavior_dataset("synthetic", num_users=1000, seed=0)
    >>> data.users, data.ctr["train"], data.label_heads
    ```
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SOURCES:
        raise ValueError(f"unknown behavior dataset {name!r}; available: {', '.join(SOURCES)}")
    return SOURCES[key](**kwargs)


def load_behavior_data(dataset: str, data_dir=None, num_users: int = 2000, synthetic_seed: int = 0):
    """What the CLI's `--dataset` names: a built-in source (`data_dir` for its files, `num_users` and
    `synthetic_seed` for the synthetic one), or else a behavior log path or glob read with `read_behavior_log`."""
    from .ingest import read_behavior_log

    key = ALIASES.get(dataset.lower(), dataset.lower())
    if key == "synthetic":
        return load_behavior_dataset("synthetic", num_users=num_users, seed=synthetic_seed)
    if key in SOURCES:
        return load_behavior_dataset(key, **({"path": data_dir} if data_dir else {}))
    return read_behavior_log(dataset)
