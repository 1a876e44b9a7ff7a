"""User embeddings for a whole dataset, written to Parquet in batches.

With the behavior cache (the default) each unique behavior of the dataset is encoded once and reused by every user
that has it; without it every user's behaviors are encoded again in each batch.

    ptum-hf embed --model_name_or_path outputs/pretrain/model --dataset movielens-100k --output_file users.parquet
"""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .atomic import atomic_file, remove_leftovers
from .data import UserCollator
from .locking import output_lock
from .modeling_ptum import PTUMModel


@dataclass
class EmbedArguments:
    model_name_or_path: str = field(metadata={"help": "A PTUM checkpoint (folder or Hub id) with its tokenizer."})
    output_file: str = field(default="outputs/user_embeddings.parquet")
    dataset: str = field(default="synthetic")
    data_dir: str | None = field(default=None)
    num_users: int = field(default=2000)
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic source."})
    batch_size: int = field(default=256)
    no_cache: bool = field(default=False, metadata={"help": "Re-encode behaviors per batch (for comparison)."})


def encode_behavior_table(model: PTUMModel, token_cache, batch_size: int = 1024) -> torch.Tensor:
    """Every behavior of the vocabulary, encoded once: (num_behaviors, hidden_size)."""
    vectors = []
    with torch.inference_mode():
        # Sorting by length keeps padding low: each chunk pads to its own longest behavior.
        order = np.argsort(token_cache.lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = token_cache.gather(rows)
            buckets = model.config.behavior_id_buckets
            bucket_ids = torch.as_tensor(token_cache.bucket_ids(rows, buckets)) if buckets else None
            vectors.append(model.encode_behaviors(torch.as_tensor(ids), torch.as_tensor(mask), bucket_ids=bucket_ids))
    if not vectors:
        return torch.zeros(0, model.config.hidden_size)
    table = torch.empty(len(order), model.config.hidden_size)
    table[torch.as_tensor(order)] = torch.cat(vectors).float()
    return table


SORT_WINDOW_BATCHES = 16  # batches whose users are sorted by history length together


def user_collator(model: PTUMModel, token_cache) -> UserCollator:
    """The collator whose history windows every PTUM task trains on, for this model's config."""
    return UserCollator(
        token_cache=token_cache,
        max_behaviors=model.config.max_behaviors,
        max_tokens=model.config.max_tokens_per_behavior,
        id_buckets=model.config.behavior_id_buckets,
    )


def iter_user_embeddings(model: PTUMModel, data, token_cache, batch_size: int = 256, use_cache: bool = True):
    """Yield (user ids, (B, hidden_size) float32 numpy vectors) batch by batch, in the order of `data.users`.

    Users are encoded in batches of similar history length (sorted within windows of `SORT_WINDOW_BATCHES` batches):
    a batch is as wide as its longest history, so mixing 20- and 100-behavior users would mostly encode padding."""
    model.eval()
    table = encode_behavior_table(model, token_cache) if use_cache else None
    collator = user_collator(model, token_cache)
    users = data.users
    window = batch_size * SORT_WINDOW_BATCHES
    with torch.inference_mode():
        for start in range(0, len(users), window):
            features = list(users.select(range(start, min(start + window, len(users)))))
            lengths = [min(len(f["behavior_ids"]), model.config.max_behaviors) for f in features]
            order = np.argsort(lengths, kind="stable")
            vectors = np.empty((len(features), model.config.hidden_size), np.float32)
            for first in range(0, len(order), batch_size):
                rows = order[first : first + batch_size]
                vectors[rows] = _embed_batch(model, [features[i] for i in rows], collator, table)
            for first in range(0, len(features), batch_size):
                chunk = features[first : first + batch_size]
                yield [row["user_id"] for row in chunk], vectors[first : first + len(chunk)]


def _embed_batch(model: PTUMModel, features: list[dict], collator: UserCollator, table) -> np.ndarray:
    if table is not None:  # histories over the whole vocabulary, whose vectors are encoded once
        _, history, gaps = collator.histories(features)
        out = model(
            history_indices=torch.from_numpy(history),
            history_time_gaps=torch.from_numpy(gaps),
            behavior_embeddings=table,
        )
    else:  # encode this batch's unique behaviors again
        out = model(**collator(features))
    return out.user_embeddings.float().numpy()


def write_user_embeddings(model, data, token_cache, output_file, batch_size: int = 256, use_cache: bool = True) -> Path:
    """Write `user_id` and `embedding` (list of float32) to Parquet under a temporary name, then rename.

    The output file's lock is held meanwhile (`OutputInUseError` when another run writes the same file)."""
    output_file = Path(output_file)
    if not len(data.users):
        raise ValueError("the dataset has no users to embed")
    with (
        output_file_lock(output_file),
        atomic_file(output_file) as tmp,
        tqdm(total=len(data.users), desc="embed", unit="user") as bar,
    ):
        writer = None
        try:
            for user_ids, vectors in iter_user_embeddings(model, data, token_cache, batch_size, use_cache):
                flat = pa.array(vectors.reshape(-1), type=pa.float32())
                column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
                batch = pa.table({"user_id": pa.array(user_ids, type=pa.string()), "embedding": column})
                if writer is None:
                    writer = pq.ParquetWriter(tmp, batch.schema)
                writer.write_table(batch)
                bar.update(len(user_ids))
        finally:
            if writer is not None:
                writer.close()
    return output_file


@contextlib.contextmanager
def output_file_lock(output_file):
    """Hold the lock of `output_file` (`.<name>.ptum-hf.lock` beside it) and, under it, remove the temporaries that
    killed writes of it left."""
    output_file = Path(output_file)
    with output_lock(output_file, "--output_file", file=True):
        remove_leftovers(output_file.parent, names={output_file.name}, untagged=(output_file.name,))
        yield


def run_embedding(args: EmbedArguments) -> Path:
    """The CLI's `embed`: load the model, its tokenizer and the dataset, and write the Parquet file."""
    from transformers import AutoTokenizer

    from .data import BehaviorTokenCache, load_behavior_data

    with output_file_lock(args.output_file):  # before anything is loaded, until the file is in place
        model = PTUMModel.from_pretrained(args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        data = load_behavior_data(args.dataset, args.data_dir, args.num_users, args.synthetic_seed)
        cache = BehaviorTokenCache.build(data.behaviors, tokenizer, model.config.max_tokens_per_behavior)
        return write_user_embeddings(model, data, cache, args.output_file, args.batch_size, use_cache=not args.no_cache)
