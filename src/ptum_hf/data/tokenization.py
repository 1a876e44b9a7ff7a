"""Behavior-text tokenizers and a token cache that tokenizes the behavior vocabulary once."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..atomic import atomic_write_json
from ..processing_ptum import text_hashes

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
MASK_TOKEN = "[MASK]"
PIECE_PREFIX = "##"  # continuation pieces, WordPiece and BPE alike
# The `tokenizer_class` a saved behavior tokenizer names: transformers 4 and 5 both load it (5 as `TokenizersBackend`,
# the name 5 itself would write, which 4 does not know). Naming a class also lets transformers 4's `AutoTokenizer`
# skip reading the model's config, whose custom-code `auto_map` would make it ask to run that code.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class BehaviorTokenizer(PreTrainedTokenizerFast):
    """A fast tokenizer of behavior texts (`train_behavior_tokenizer`, `load_tokenizer`): a
    `PreTrainedTokenizerFast` whose `save_pretrained` writes `tokenizer_class: PreTrainedTokenizerFast`, wherever it is
    saved from (the Trainer's `checkpoint-N` folders included), so the files load with any supported transformers and
    need no code of ours."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        for name in saved:
            if str(name).endswith("tokenizer_config.json"):
                write_portable_tokenizer_class(name)
        return saved


def write_portable_tokenizer_class(tokenizer_config_file) -> None:
    """Rewrite a saved `tokenizer_config.json` of a plain fast tokenizer (or a `BehaviorTokenizer`) to name
    `PORTABLE_TOKENIZER_CLASS`; the file of any other tokenizer class is left as it is."""
    with open(tokenizer_config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("tokenizer_class") in ("TokenizersBackend", BehaviorTokenizer.__name__):
        atomic_write_json(tokenizer_config_file, {**config, "tokenizer_class": PORTABLE_TOKENIZER_CLASS})


def train_behavior_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 30000,
    model: str = "wordpiece",
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """
    Train a tokenizer on behavior texts with `tokenizers`. `[PAD]` gets id 0, `[UNK]` id 1 (`[MASK]` id 2 is
    reserved); texts are NFKC-normalised and lowercased; no special tokens are added around a text.

    Args:
        texts: the texts (e.g. `BehaviorDataset.behaviors`); a sequence is read twice, any other iterable is first
            copied into a list.
        vocab_size: the largest vocabulary to learn.
        model: `"wordpiece"` (BERT-style `##` pieces) or `"bpe"`.
        min_frequency: pieces seen fewer times are not learned.

    Returns a `BehaviorTokenizer` (a `transformers.PreTrainedTokenizerFast`); save it with `save_pretrained` next to
    the model.
    """
    if model not in ("wordpiece", "bpe"):
        raise ValueError(f"model must be 'wordpiece' or 'bpe', got {model!r}")
    if not isinstance(texts, Sequence) or isinstance(texts, str):
        texts = list(texts)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    normalizer, pre_tokenizer = normalizers.Sequence(steps), pre_tokenizers.BertPreTokenizer()
    special = [PAD_TOKEN, UNK_TOKEN, MASK_TOKEN]
    pieces = _continuing_pieces(texts, normalizer, pre_tokenizer)
    options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special + pieces)
    if model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        trainer = trainers.WordPieceTrainer(**options)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN, continuing_subword_prefix=PIECE_PREFIX))
        trainer = trainers.BpeTrainer(**options, continuing_subword_prefix=PIECE_PREFIX)
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer = _unmark_special(tokenizer, set(pieces))
    return BehaviorTokenizer(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
        do_lower_case=lowercase,
    )


def load_tokenizer(name_or_path: str | None, data=None, vocab_size: int = 8000) -> PreTrainedTokenizerBase:
    """The tokenizer saved at `name_or_path` (a checkpoint or tokenizer folder, or a Hub id), or, without one, a
    WordPiece tokenizer trained on `data.behaviors`. A plain fast tokenizer comes back as a `BehaviorTokenizer`, so
    that saving it again (a fine-tuned checkpoint) keeps its files loadable everywhere."""
    if name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if type(tokenizer) is PreTrainedTokenizerFast:
            return BehaviorTokenizer.from_pretrained(name_or_path)
        return tokenizer
    if data is None:
        raise ValueError("give a tokenizer name_or_path, or data whose behavior texts to train one on")
    return train_behavior_tokenizer(data.behaviors, vocab_size=vocab_size)


def _continuing_pieces(texts: Sequence[str], normalizer, pre_tokenizer) -> list[str]:
    """`##c` for every character `c` found after the first character of a word (normalized, pre-tokenized), sorted.

    The `tokenizers` trainers (0.22) create these one-character continuation pieces in hash-map order, which differs
    from process to process; their ids then break ties between equally frequent merges, so the same texts gave
    different vocabularies (huggingface/tokenizers#1794). Passed as special tokens they exist, in this order, before
    training starts, and the vocabulary no longer depends on the process. The words come from the tokenizer's own
    normalizer and pre-tokenizer, so the set is exactly the pieces the trainer would create."""
    chars = set()
    for batch in _batches(texts):
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str("\n".join(batch)))
        chars.update("".join(word[1:] for word, _ in words))
    return [PIECE_PREFIX + c for c in sorted(chars)]


def _unmark_special(tokenizer: Tokenizer, pieces: set[str]) -> Tokenizer:
    """Keep the continuation pieces in the vocabulary (same ids) but as ordinary tokens: as special tokens they
    would be matched in raw text and dropped by `decode(skip_special_tokens=True)`."""
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in pieces]
    return Tokenizer.from_str(json.dumps(state))


def _batches(texts: Iterable[str], size: int = 10000):
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@dataclass
class BehaviorTokenCache:
    """
    The token ids of every behavior of a vocabulary, in a ragged layout: behavior b's tokens are
    `token_ids[offsets[b]:offsets[b + 1]]`, at most `max_tokens` of them (special tokens included). A text that
    tokenizes to nothing gets one `[UNK]`, so no behavior is all padding.

    Build it once with `BehaviorTokenCache.build(dataset.behaviors, tokenizer)`; collators then `gather` rows.
    """

    token_ids: np.ndarray  # int32, flat
    offsets: np.ndarray  # int64, len = behaviors + 1
    pad_token_id: int = 0
    max_tokens: int = 30
    text_hashes: np.ndarray | None = None  # uint64 `text_hashes` of each behavior: its identity across datasets

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int = 30,
        add_special_tokens: bool = True,
        batch_size: int = 8192,
    ) -> BehaviorTokenCache:
        """Tokenize `texts` in batches. `add_special_tokens` keeps e.g. BERT's `[CLS] ... [SEP]` for a pretrained
        encoder (a tokenizer from `train_behavior_tokenizer` adds none)."""
        pad_id = pad_token_id_of(tokenizer)
        pieces, lengths = [], []
        for start in range(0, len(texts), batch_size):
            ids = tokenize(tokenizer, texts[start : start + batch_size], max_tokens, add_special_tokens)
            lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
            pieces.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths[-1].sum())))
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        token_ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        return cls(
            token_ids=token_ids,
            offsets=offsets,
            pad_token_id=pad_id,
            max_tokens=max_tokens,
            text_hashes=text_hashes(texts),
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def gather(self, behavior_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 arrays (M, L) for the given behavior ids; L = their longest length."""
        behavior_ids = np.asarray(behavior_ids, np.int64)
        if len(behavior_ids) and (behavior_ids.min() < 0 or behavior_ids.max() >= len(self)):
            bad = behavior_ids[(behavior_ids < 0) | (behavior_ids >= len(self))][0]
            raise IndexError(
                f"behavior id {bad} is outside the token cache (size {len(self)}); was the cache built "
                "from this dataset's `behaviors`?"
            )
        return gather_ragged(self.token_ids, self.offsets, behavior_ids, self.pad_token_id)

    def bucket_ids(self, behavior_ids: np.ndarray, buckets: int) -> np.ndarray:
        """Each behavior's id bucket (`PTUMConfig.behavior_id_buckets`): its text's hash modulo `buckets`."""
        if self.text_hashes is None:
            raise ValueError("this token cache has no text hashes (built before they existed): build it again")
        return (self.text_hashes[np.asarray(behavior_ids, np.int64)] % np.uint64(buckets)).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Save as one `.npz` file."""
        extra = {} if self.text_hashes is None else {"text_hashes": self.text_hashes}
        meta = np.array([self.pad_token_id, self.max_tokens])
        np.savez(path, token_ids=self.token_ids, offsets=self.offsets, meta=meta, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BehaviorTokenCache:
        with np.load(path) as data:
            pad_id, max_tokens = data["meta"].tolist()
            hashes = data["text_hashes"] if "text_hashes" in data else None
            return cls(
                token_ids=data["token_ids"],
                offsets=data["offsets"],
                pad_token_id=pad_id,
                max_tokens=max_tokens,
                text_hashes=hashes,
            )


def gather_ragged(token_ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pad_id: int):
    """Rows of a ragged token array as a padded (M, L) matrix and its mask, without a per-token loop."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    width = int(lengths.max()) if len(rows) else 0
    mask = np.arange(width) < lengths[:, None]
    input_ids = np.full((len(rows), width), pad_id, np.int64)
    input_ids[mask] = token_ids[(starts[:, None] + np.arange(width))[mask]]
    return input_ids, mask.astype(np.int64)


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int, add_special_tokens: bool = True
) -> list[list[int]]:
    """Token id lists of `texts`, truncated to `max_tokens`; an empty result becomes `[UNK]`."""
    texts = list(texts)
    encoder = _backend(tokenizer, max_tokens)
    if encoder is not None:
        # The Rust tokenizer directly: several times faster than the BatchEncoding path, same ids.
        encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)  # _fast skips offsets (tokenizers>=0.21)
        ids = [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]
    else:
        ids = tokenizer(
            texts,
            add_special_tokens=add_special_tokens,
            truncation=True,
            max_length=max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad_token_id_of(tokenizer)
    return [row if row else [unk] for row in ids]


_BACKENDS: dict = {}


def _backend(tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> Tokenizer | None:
    """A copy of a fast tokenizer's backend truncating at `max_tokens` (the original is left untouched)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    key = (id(tokenizer), max_tokens)
    cached = _BACKENDS.get(key)
    if cached is None or cached[0] is not tokenizer:
        copy = Tokenizer.from_str(backend.to_str())
        copy.no_padding()
        copy.enable_truncation(max_tokens)
        if len(_BACKENDS) > 16:
            _BACKENDS.clear()
        cached = _BACKENDS[key] = (tokenizer, copy)
    return cached[1]


def pad_token_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token first")
    return int(tokenizer.pad_token_id)
