"""Seeded user splits: pre-training's held-out users, the downstream 80/10/10 split, label and evaluation subsets.

Functions of plain arguments (a dataset, a seed, a fraction), so that every caller (the CLI, the Trainer recipe,
the experiment runner, a user's notebook) gets the same users for the same seed.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from .dataset import arrow_columns, columns


def split_users(users, eval_fraction: float, seed: int):
    """A seeded random split of the users table into (train, held out)."""
    order = np.random.default_rng(seed).permutation(len(users))
    held = max(1, int(round(eval_fraction * len(users))))
    return users.select(np.sort(order[held:])), users.select(np.sort(order[:held]))


def split_users_three_way(users, seed: int, fractions=(0.8, 0.1, 0.1)):
    """A seeded random 80/10/10 split of users into (train, validation, test)."""
    order = np.random.default_rng(seed).permutation(len(users))
    n_train = int(round(fractions[0] * len(users)))
    n_val = int(round(fractions[1] * len(users)))
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(users.select(np.sort(part)) for part in parts)


def label_subset(train, fraction: float, seed: int):
    """The first `fraction` of a seeded shuffle of the training users (nested: 20% is inside 50%)."""
    if fraction >= 1.0:
        return train
    order = np.random.default_rng(seed + 1).permutation(len(train))
    keep = max(1, int(round(fraction * len(train))))
    return train.select(np.sort(order[:keep]))


def eval_subset(validation, size: int | None, seed: int):
    """A seeded random `size` rows of the validation split, in their original order (all of it when smaller)."""
    if size is None or size >= len(validation):
        return validation
    keep = np.random.default_rng(seed + 2).choice(len(validation), size, replace=False)
    return validation.select(np.sort(keep))


def demographics_splits(data, label_names, label_fraction: float = 1.0, split_seed: int = 0):
    """Users with at least one of `label_names` split 80/10/10 by `split_seed`; the training part cut to
    `label_fraction` of them."""
    table = arrow_columns(data.users, *label_names)
    labeled = np.zeros(len(table), bool)
    for name in label_names:
        labeled |= np.asarray(pc.is_valid(table.column(name)))
    train, validation, test = split_users_three_way(data.users.select(np.flatnonzero(labeled)), split_seed)
    return label_subset(train, label_fraction, split_seed), validation, test


def ctr_splits(data, label_fraction: float = 1.0, split_seed: int = 0):
    """The source's time-based CTR split; training impressions cut to `label_fraction` of the training users."""
    if data.ctr is None:
        raise ValueError("this dataset has no CTR task (data.ctr is None)")
    train = data.ctr["train"]
    if label_fraction < 1.0:
        (rows,) = columns(train, "user_index")
        users = np.unique(rows)
        order = np.random.default_rng(split_seed + 1).permutation(users)
        keep = order[: max(1, int(round(label_fraction * len(users))))]
        train = train.select(np.flatnonzero(np.isin(rows, keep)))
    return train, data.ctr["validation"], data.ctr["test"]
