"""Pieces shared by pre-training, fine-tuning and embedding: data loading, seeded collation, atomic folders,
the CSV tracker."""

import contextlib
import csv
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate.tracking import GeneralTracker


class UserRows(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` for a DataLoader, each tagged with its row number (`_index`) so that a
    `SeededCollator` can derive the batch's randomness from what the batch holds."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {**self.rows[int(index)], "_index": int(index)}


class SeededCollator:
    """Wraps a collator so that its random choices (masked slot, negatives) depend only on (seed, epoch, rows):
    the same batch gets the same examples in a worker process, after a resume, or in a second run."""

    def __init__(self, collator, seed: int):
        self.collator = collator
        self.seed = seed
        self.epoch = 0

    def __call__(self, features):
        indices = [feature.pop("_index") for feature in features]
        info = torch.utils.data.get_worker_info()
        # The collator keeps a generator per process (see BehaviorCollatorBase.generator); replace it per batch.
        self.collator._rng = np.random.default_rng([self.seed, self.epoch, len(indices), *indices])
        self.collator._rng_owner = (os.getpid(), None if info is None else info.seed)
        return self.collator(features)


@contextlib.contextmanager
def atomic_directory(final, accelerator=None):
    """Yield a temporary folder beside `final`; rename it to `final` only when the block finished.

    A kill inside the block leaves a `.tmp-*` folder that nothing reads as a finished output. With an accelerator,
    every process gets the same temporary folder and the main process renames it.
    """
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}"
    main = accelerator is None or accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run
        tmp.mkdir(parents=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    yield tmp
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        old = final.parent / f".old-{final.name}"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def atomic_write_text(path, text: str):
    """Write a text file under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


class CSVTracker(GeneralTracker):
    """Accelerate tracker writing `step,key,value` rows to `<output_dir>/logs/metrics.csv` (used when TensorBoard is
    not installed)."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir):
        super().__init__()
        self.path = Path(logging_dir) / "logs" / "metrics.csv"

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path.parent / "config.json", json.dumps(values, indent=2, default=str))

    def log(self, values: dict, step=None, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "key", "value"])
            writer.writerows([step, key, value] for key, value in values.items())


def build_tracker(report_to: str, output_dir):
    """`tensorboard` when asked for (or `auto` and installed), the CSV tracker otherwise, None for `none`."""
    if report_to == "none":
        return None
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if report_to == "tensorboard" or (report_to == "auto" and has_tensorboard):
        if not has_tensorboard:
            raise ValueError("report_to=tensorboard but tensorboard is not installed: pip install tensorboard")
        return "tensorboard"
    return CSVTracker("ptum", output_dir)


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


def load_behavior_data(dataset: str, data_dir=None, num_users: int = 2000, synthetic_seed: int = 0):
    """A built-in source by name, or a behavior log path/glob read with `read_behavior_log`."""
    from .data import load_behavior_dataset, read_behavior_log
    from .data.sources import ALIASES, SOURCES

    key = ALIASES.get(dataset.lower(), dataset.lower())
    if key == "synthetic":
        return load_behavior_dataset("synthetic", num_users=num_users, seed=synthetic_seed)
    if key in SOURCES:
        return load_behavior_dataset(key, **({"path": data_dir} if data_dir else {}))
    return read_behavior_log(dataset)


def load_tokenizer(tokenizer_name, data, vocab_size: int = 8000):
    """An existing tokenizer, or a WordPiece one trained on the dataset's behavior texts."""
    if tokenizer_name:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_name)
    from .data import train_behavior_tokenizer

    return train_behavior_tokenizer(data.behaviors, vocab_size=vocab_size)


def load_data_and_tokenizer(args):
    data = load_behavior_data(args.dataset, args.data_dir, args.num_users, args.synthetic_seed)
    return data, load_tokenizer(args.tokenizer_name, data, args.tokenizer_vocab_size)


def pretraining_collator(data, tokenizer, config, seed: int = 0, token_cache=None):
    from .data import PretrainingCollator

    return PretrainingCollator.from_dataset(
        data, tokenizer, max_tokens=config.max_tokens_per_behavior, token_cache=token_cache,
        num_negatives=config.num_negatives, num_next=config.num_next, max_behaviors=config.max_behaviors, seed=seed,
    )


def dataset_statistics(data) -> dict:
    """Counts for model cards and logs."""
    lengths = data.sequences().lengths
    stats = {
        "users": int(len(lengths)),
        "events": int(lengths.sum()),
        "unique_behaviors": len(data.behaviors),
        "mean_behaviors_per_user": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
    }
    if data.label_classes:
        stats["labels"] = {name: len(classes) for name, classes in data.label_classes.items()}
    if data.ctr is not None:
        stats["ctr_impressions"] = {split: part.num_rows for split, part in data.ctr.items()}
    return stats
