"""PyTorch PTUM models: a behavior (text) encoder, a user encoder, and the pre-training and downstream heads.

Batch layout. Behaviors repeat across users and as candidates, so a batch carries its *unique* behaviors once, as
`behavior_input_ids` / `behavior_attention_mask` of shape (M, L), and everything else points at them by row index:

- histories: `history_indices` (B, N), chronological, right-padded with -1; -2 marks a masked slot (MBP);
- `history_time_gaps` (B, N): seconds from each behavior to the view's reference time (bucketed as log2 here);
- candidates: index tensors into the same table.

Only torch, numpy (which torch and transformers need), public transformers API and the config are imported, so a
checkpoint saved with this file loads with `trust_remote_code=True` where `ptum_hf` is not installed.
"""

import difflib
import hashlib
import inspect
import json
import math
import ntpath
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput

from .configuration_ptum import PTUMConfig

# Markers in index tensors (histories and candidates are rows of the behavior table, so markers are negative) and the
# label the losses skip. The data collators write these same values.
PAD_INDEX = -1  # an empty history slot or a missing ad description
MASK_INDEX = -2  # a masked history slot (MBP): replaced by the learned mask vector
IGNORE_INDEX = -100  # a label left out of the loss (torch's cross-entropy default)
CHECKPOINT_CHUNK_BEHAVIORS = 256  # behaviors per recomputed chunk under gradient checkpointing
# `auto_map` of a checkpoint that ships this file (`register_for_auto_classes`). transformers reads an entry only for
# the Auto class of that name, so `AutoModelForCTR` (no transformers class; `ptum_hf.AutoModelForCTR` has it) is
# harmless and names the CTR head for `transformers.dynamic_module_utils.get_class_from_dynamic_module`.
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_ptum.PTUMConfig",
    "AutoModel": "modeling_ptum.PTUMModel",
    "AutoModelForPreTraining": "modeling_ptum.PTUMForPretraining",
    "AutoModelForSequenceClassification": "modeling_ptum.PTUMForDemographicClassification",
    "AutoModelForCTR": "modeling_ptum.PTUMForCTR",
}
# Keyword arguments that generic callers pass to Hugging Face models: `forward` accepts them besides its own and
# ignores them. The Trainer passes `num_items_in_batch` only to models with `accepts_loss_kwargs` (False here), but
# other training loops may pass it anyway: PTUM losses are per-batch means whatever it says. The output flags are
# accepted when false (there is nothing to return for them).
_IGNORED_FORWARD_KWARGS = ("num_items_in_batch",)
_UNSUPPORTED_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states")
_TEXT_INPUT_HINT = (
    ". PTUM models read users (histories of behaviors), not one tokenized text: for raw events (user_id, timestamp, "
    "text) use model.encode(events), model.predict(events), or pipeline('user-feature-extraction' | "
    "'user-classification', model=..., trust_remote_code=True)"
)


# ----------------------------------------------------------------------------- outputs


@dataclass
class PTUMModelOutput(ModelOutput):
    """
    Args:
        user_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): one vector per user.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_behaviors, hidden_size)`): per-behavior
            hidden states of the user encoder (zeros at padding).
        behavior_embeddings (`torch.FloatTensor` of shape `(num_unique_behaviors, hidden_size)`): the encoded
            behavior table, reusable as a cache.
    """

    user_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    behavior_embeddings: torch.FloatTensor | None = None


@dataclass
class PTUMForPretrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when labels are given): MBP loss + lambda * NBP loss
            (+ bag_weight * bag loss with `config.use_bag`).
        mbp_loss, nbp_loss, bag_loss (`torch.FloatTensor` of shape `()`): the task losses (when the task is on).
        mbp_logits (`torch.FloatTensor` of shape `(batch_size, num_negatives + 1)`): candidate scores.
        nbp_logits (`torch.FloatTensor` of shape `(batch_size, num_next, num_negatives + 1)`): candidate scores.
        bag_logits (`torch.FloatTensor` of shape `(batch_size, num_unique_behaviors)`): every behavior's score.
        mbp_accuracy, nbp_accuracy (`torch.FloatTensor` of shape `()`): top-1 accuracy over labelled examples;
            bag_accuracy: how often a user's top-scored behavior is one of the user's.
    """

    loss: torch.FloatTensor | None = None
    mbp_loss: torch.FloatTensor | None = None
    nbp_loss: torch.FloatTensor | None = None
    mbp_logits: torch.FloatTensor | None = None
    nbp_logits: torch.FloatTensor | None = None
    mbp_accuracy: torch.FloatTensor | None = None
    nbp_accuracy: torch.FloatTensor | None = None
    bag_loss: torch.FloatTensor | None = None
    bag_logits: torch.FloatTensor | None = None
    bag_accuracy: torch.FloatTensor | None = None


@dataclass
class PTUMClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given): cross-entropy summed over heads.
        logits (`torch.FloatTensor` of shape `(batch_size, sum(label_heads.values()))`): every head's logits,
            concatenated in `config.label_heads` order; `model.split_logits(logits)` gives them per head.
        user_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    user_embeddings: torch.FloatTensor | None = None


@dataclass
class PTUMCTROutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given): binary cross-entropy.
        logits (`torch.FloatTensor` of shape `(batch_size,)`): click logits (user . ad + bias); sigmoid = probability.
        user_embeddings, ad_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    user_embeddings: torch.FloatTensor | None = None
    ad_embeddings: torch.FloatTensor | None = None


def build_behavior_table(input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None, pad_token_id=0):
    """Plain padded behaviors (B, N, L) -> the unique-behavior layout.

    Returns `(behavior_input_ids (M, L), behavior_attention_mask (M, L), history_indices (B, N))`; a slot whose
    tokens are all padding becomes -1. Identical token rows are stored once.
    """
    if attention_mask is None:
        attention_mask = (input_ids != pad_token_id).long()
    batch, slots, length = input_ids.shape
    ids = input_ids.masked_fill(attention_mask == 0, pad_token_id).reshape(-1, length)
    valid = attention_mask.reshape(-1, length).any(-1)
    unique, inverse = torch.unique(ids[valid], dim=0, return_inverse=True)
    history = torch.full((batch * slots,), PAD_INDEX, dtype=torch.long, device=input_ids.device)
    history[valid] = inverse
    return unique, (unique != pad_token_id).long(), history.view(batch, slots)


# ----------------------------------------------------------------------------- building blocks


def _is_exporting() -> bool:
    """Whether `torch.export` (or the ONNX exporter on top of it) is tracing: the paths whose sizes or branches depend
    on values (input checks, packing by length) then take shape-only equivalents, so one graph serves every batch."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # older torch: export sets only is_compiling
    return is_exporting() if is_exporting is not None else torch.compiler.is_compiling()


class _MaskedScale(torch.autograd.Function):
    """`x * keep * scale` with a boolean `keep`; saves only the mask (as `F.dropout` does)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked_scale(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _masked_scale(grad, keep, ctx.scale), None, None


def _masked_scale(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # where + in-place scale: two passes, where `x * keep * scale` (or native_dropout_backward) also converts the
    # boolean mask to floats first.
    return torch.where(keep, x, 0.0).mul_(scale)


def _keep_mask(shape, p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask keeping each element with probability ~1 - p, and the matching scale.

    `F.dropout` on CPU draws one Bernoulli per element from the (serial) Mersenne Twister, which costs more than the
    matmuls around it. Here 16 random bits per element come from numpy's PCG64 (four elements per 64-bit draw, seeded
    from torch's generator, so `torch.manual_seed` still makes runs repeatable): p is rounded to a multiple of 2**-16
    (0.2 -> 0.199997) and the scale is 1 / (1 - that p)."""
    count = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)))
    bits = np.random.PCG64(seed).random_raw((count + 3) // 4).view(np.int16)[:count]
    threshold = round(p * 65536)
    keep = torch.from_numpy(bits).view(shape) >= threshold - 32768
    return keep, 65536.0 / (65536 - threshold)


class PTUMDropout(nn.Dropout):
    """`nn.Dropout` with a cheaper random mask on CPU (see `_keep_mask`); CUDA and other devices use `F.dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.numel() == 0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0 or self.inplace:
            return super().forward(x)
        keep, scale = _keep_mask(x.shape, self.p)
        return _MaskedScale.apply(x, keep, scale)


def _split_heads(qkv: torch.Tensor, rows: int, length: int, num_heads: int):
    """(rows * length, 3 * H * d) or (rows, length, 3 * H * d) projections -> q, k, v, each (rows, H, length, d).

    Unbound on the (3) axis: the backward stacks the three gradients straight into the projection's layout (one copy);
    a permute first would add a second copy of the whole gradient."""
    return tuple(t.transpose(1, 2) for t in qkv.view(rows, length, 3, num_heads, -1).unbind(2))


class _Padded:
    """The valid slots of a (B, N) mask, packed: position-wise layers run on the (T, C) valid rows only, and
    `pad` puts them back into (B, N, C) for attention over each row. Padding never enters a valid slot's result, so
    skipping it changes nothing but the cost."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self.index = mask.reshape(-1).nonzero().squeeze(1)
        # A row with no valid key would give NaN; let such rows attend everywhere (their outputs are never read).
        self.key_mask = (mask | ~mask.any(-1, keepdim=True))[:, None, None, :]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.index)

    def pad(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        batch, slots = self.mask.shape
        out = packed.new_full((batch * slots, *packed.shape[1:]), fill)
        return out.index_copy(0, self.index, packed).view(batch, slots, *packed.shape[1:])

    def attend(self, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """Packed (T, 3 * H * d) projections -> packed (T, H * d) attention outputs within each row."""
        batch, slots = self.mask.shape
        q, k, v = _split_heads(self.pad(qkv), batch, slots, num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.key_mask)
        return self.pack(out.transpose(1, 2).reshape(batch, slots, -1))

    def pool(self, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Softmax of packed (T,) scores within each row, then the weighted sum of padded (B, N, D) values."""
        scores = self.pad(scores, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(values.dtype) * self.mask.to(values.dtype)
        return torch.einsum("bn,bnd->bd", weights, values)


class _LengthGroups:
    """The valid tokens of a (M, L) token mask, packed row after row with the rows sorted by length, so that the rows
    of one length are a contiguous block of tokens: attention and pooling run per block without any padding or mask,
    and the linear layers on all T valid tokens at once.

    `token_rows`, `token_positions` (T,): where each packed token comes from; `groups`: (length, rows) per block,
    shortest first (length 0 included); `unsort(x)` puts per-row results back in the input's row order."""

    def __init__(self, mask: torch.Tensor):
        lengths = mask.sum(-1)
        order = torch.argsort(lengths, stable=True)
        rows, self.token_positions = mask.index_select(0, order).nonzero(as_tuple=True)
        self.token_rows = order[rows]
        counts = torch.bincount(lengths, minlength=1).tolist()
        self.groups = [(length, rows) for length, rows in enumerate(counts) if rows]
        self.token_counts = [length * rows for length, rows in self.groups]
        self.order = order

    def attend(self, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """Packed (T, 3 * H * d) projections -> packed (T, H * d) attention outputs within each row."""
        # split, not slices: the gradient of a split is one concatenation, that of each slice a full-size tensor.
        blocks = qkv.split(self.token_counts)
        outputs = []
        for (length, rows), block in zip(self.groups, blocks):
            if not length:
                continue
            q, k, v = _split_heads(block, rows, length, num_heads)
            out = F.scaled_dot_product_attention(q, k, v)
            outputs.append(out.transpose(1, 2).reshape(rows * length, -1))
        return torch.cat(outputs) if outputs else qkv.new_zeros(0, qkv.shape[-1] // 3)

    def pool(self, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Softmax of packed (T,) scores within each row, then the weighted sum of packed (T, D) values: (M, D)."""
        pooled = []
        blocks = zip(self.groups, scores.split(self.token_counts), values.split(self.token_counts))
        for (length, rows), block_scores, block_values in blocks:
            if not length:  # rows without any valid token pool to zeros
                pooled.append(values.new_zeros(rows, values.shape[-1]))
                continue
            weights = torch.softmax(block_scores.view(rows, length).float(), dim=-1).to(values.dtype)
            pooled.append(torch.bmm(weights.unsqueeze(1), block_values.view(rows, length, -1)).squeeze(1))
        return self.unsort(torch.cat(pooled))

    def unsort(self, sorted_rows: torch.Tensor) -> torch.Tensor:
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(len(self.order), device=self.order.device)
        return sorted_rows.index_select(0, inverse)


class PTUMAdditiveAttention(nn.Module):
    """Additive attention pooling: score_i = q . tanh(W x_i + b); returns sum_i softmax(score)_i x_i.

    `x` (..., N, D), `mask` (..., N) bool -> (..., D). Rows with no valid item pool to zeros.
    """

    def __init__(self, dim: int, query_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, query_dim)
        self.query = nn.Linear(query_dim, 1, bias=False)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(torch.tanh(self.proj(x))).squeeze(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.scores(x)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(x.dtype) * mask.to(x.dtype)
        return torch.einsum("...n,...nd->...d", weights, x)


class PTUMSelfAttention(nn.Module):
    """Multi-head self-attention with fused scaled-dot-product attention. `x` (B, N, D_in) -> (B, N, H * d)."""

    def __init__(self, in_dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(in_dim, 3 * out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = _split_heads(self.qkv(x), batch, length, self.num_heads)
        # A row with no valid key would give NaN; let such rows attend everywhere, callers zero them afterwards.
        key_mask = mask | ~mask.any(-1, keepdim=True)
        # No dropout on attention probabilities (the paper drops embeddings and layer outputs only): on CPU the
        # (B, heads, N, N) dropout mask cost more than the attention itself.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return out.transpose(1, 2).reshape(batch, length, -1)

    def packed(self, x: torch.Tensor, packing) -> torch.Tensor:
        """The same on packed valid positions: `x` (T, D_in) -> (T, H * d); `packing` groups them into rows."""
        return packing.attend(self.qkv(x), self.num_heads)


class PTUMTransformerLayer(nn.Module):
    """Post-norm transformer layer: self-attention and feed-forward, each with residual and LayerNorm."""

    def __init__(self, config: PTUMConfig):
        super().__init__()
        dim = config.hidden_size
        self.attention = PTUMSelfAttention(dim, config.num_attention_heads, dim)
        self.output = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, dim)
        )
        self.output_norm = nn.LayerNorm(dim)
        self.dropout = PTUMDropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.output(self.attention(x, mask))))
        return self.output_norm(x + self.dropout(self.feed_forward(x)))

    def packed(self, x: torch.Tensor, packing) -> torch.Tensor:
        """`forward` on packed valid positions `x` (T, D): every sublayer but attention is position-wise."""
        x = self.attention_norm(x + self.dropout(self.output(self.attention.packed(x, packing))))
        return self.output_norm(x + self.dropout(self.feed_forward(x)))


def _packed_rnn(rnn: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor):
    """Run an RNN over right-padded `x` (B, N, D) so padding never enters it; returns (outputs, last states)."""
    if _is_exporting():
        return _padded_rnn(rnn, x, mask)
    lengths = mask.sum(-1).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    outputs, state = rnn(packed)
    outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    if isinstance(state, tuple):  # LSTM: (h, c)
        state = state[0]
    last = torch.cat([state[-1]] if not rnn.bidirectional else [state[-2], state[-1]], dim=-1)
    return outputs, last


def _padded_rnn(rnn: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor):
    """`_packed_rnn` where packing cannot be traced (its sizes are data): the same outputs at valid slots (padding
    slots hold anything finite; callers mask them) and last states, from plain runs of PTUM's one-layer RNNs. A forward
    direction never reads a later slot; the backward one runs over each row shifted right to end at the last slot."""
    batch, slots, _ = x.shape
    lengths = mask.sum(-1).clamp(min=1)
    outputs, _ = rnn(x)
    last_slot = (lengths - 1).view(batch, 1, 1)
    if not rnn.bidirectional:
        return outputs, outputs.gather(1, last_slot.expand(-1, 1, outputs.shape[-1])).squeeze(1)
    half = outputs.shape[-1] // 2
    shift = (slots - lengths)[:, None]
    steps = torch.arange(slots, device=x.device)[None]
    # No `% slots`: ONNX conversion takes no remainder by a size. Clamped slots are outside the row: never read.
    shifted = x.gather(1, (steps - shift).clamp(min=0)[..., None].expand_as(x))
    back = torch.minimum(steps + shift, steps[:, -1:])
    backward = rnn(shifted)[0][..., half:].gather(1, back[..., None].expand(-1, -1, half))
    forward = outputs[..., :half]
    last = torch.cat([forward.gather(1, last_slot.expand(-1, 1, half)).squeeze(1), backward[:, 0]], dim=-1)
    return torch.cat([forward, backward], dim=-1), last


# ----------------------------------------------------------------------------- behavior encoders


class PTUMBehaviorEncoder(nn.Module):
    """Encodes behavior texts. `input_ids`, `attention_mask` (M, L) -> (M, hidden_size).

    `attention` is the paper's encoder (word + position embeddings, multi-head self-attention, additive attention);
    `cnn` (HURA, NativeCTR), `lstm` (HAN's attentional bi-LSTM), `gru` (GRU4Rec) and `transformer` (BERT4Rec) share
    the word embeddings and differ in the contextual layer.

    `attention` and `transformer` run on the valid tokens only (`_LengthGroups`): no padding is embedded, projected
    or attended to, whatever the longest behavior of the batch is.
    """

    def __init__(self, config: PTUMConfig):
        super().__init__()
        kind, dim, emb = config.behavior_encoder_type, config.hidden_size, config.word_embedding_dim
        self.kind = kind
        self.word_embeddings = nn.Embedding(config.vocab_size, emb, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_tokens_per_behavior, emb)
        self.dropout = PTUMDropout(config.dropout)
        self.input_proj = nn.Identity()
        if kind == "attention":
            self.context = PTUMSelfAttention(emb, config.num_attention_heads, dim)
        elif kind == "cnn":
            self.context = nn.Conv1d(emb, dim, config.cnn_kernel_size, padding=config.cnn_kernel_size // 2)
        elif kind == "lstm":
            self.context = nn.LSTM(emb, dim // 2, batch_first=True, bidirectional=True)
        elif kind == "gru":
            self.context = nn.GRU(emb, dim, batch_first=True)
        elif kind == "transformer":
            self.input_proj = nn.Linear(emb, dim)
            self.context = nn.ModuleList(PTUMTransformerLayer(config) for _ in range(config.behavior_num_layers))
        if kind != "gru":
            self.pooling = PTUMAdditiveAttention(dim, config.additive_attention_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        if self.kind in ("attention", "transformer"):
            return self._forward_padded(input_ids, mask) if _is_exporting() else self._forward_packed(input_ids, mask)
        x = self.dropout(self.word_embeddings(input_ids))  # recurrent and convolutional layers see order themselves
        if self.kind == "cnn":
            x = torch.relu(self.context(x.masked_fill(~mask[..., None], 0.0).transpose(1, 2))).transpose(1, 2)
        elif self.kind == "lstm":
            x, _ = _packed_rnn(self.context, x, mask)
        else:  # gru
            return self.dropout(_packed_rnn(self.context, x, mask)[1]) * mask.any(-1, keepdim=True)
        return self.pooling(self.dropout(x), mask)

    def _forward_padded(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`_forward_packed` over the padded (M, L) table, for export (the length groups are data): padding is
        masked out of attention and pooling instead of left out, which gives the same vectors."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        if self.kind == "attention":
            x = self.context(x, mask)
        else:
            x = self.input_proj(x)
            for layer in self.context:
                x = layer(x, mask)
        return self.pooling(self.dropout(x), mask)

    def _forward_packed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        groups = _LengthGroups(mask)
        x = self.word_embeddings(input_ids[groups.token_rows, groups.token_positions])
        x = self.dropout(x + self.position_embeddings(groups.token_positions))
        if self.kind == "attention":
            x = self.context.packed(x, groups)
        else:
            x = self.input_proj(x)
            for layer in self.context:
                x = layer.packed(x, groups)
        x = self.dropout(x)
        return groups.pool(self.pooling.scores(x), x)


class PTUMPretrainedTextEncoder(nn.Module):
    """Any Hugging Face text encoder (built from `config.text_encoder_config`), mean-pooled and projected.

    Its weights live in the PTUM checkpoint; `PTUMModel.from_text_encoder` loads the pretrained ones once.
    """

    def __init__(self, config: PTUMConfig):
        super().__init__()
        text_config = dict(config.text_encoder_config)
        text_config = AutoConfig.for_model(text_config.pop("model_type"), **text_config)
        self.encoder = AutoModel.from_config(text_config)
        self.proj = nn.Linear(text_config.hidden_size, config.hidden_size)
        self.frozen = config.freeze_text_encoder
        if self.frozen:
            self.encoder.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(pooled)


def build_behavior_encoder(config: PTUMConfig) -> nn.Module:
    if config.behavior_encoder_type == "pretrained":
        return PTUMPretrainedTextEncoder(config)
    return PTUMBehaviorEncoder(config)


# ----------------------------------------------------------------------------- user encoder


class PTUMUserEncoder(nn.Module):
    """Behavior vectors + position and log2 time-gap embeddings -> per-behavior states and one user vector.

    `x` (B, N, D), `mask` (B, N), `time_gaps` (B, N) seconds -> ((B, N, D), (B, D)). The `transformer`,
    `self_attention` and `attention` kinds run their position-wise layers on the valid slots only (`_Padded`).
    """

    def __init__(self, config: PTUMConfig):
        super().__init__()
        dim, kind = config.hidden_size, config.user_encoder_type
        self.kind = kind
        self.num_time_buckets = config.num_time_buckets
        self.position_embeddings = nn.Embedding(config.max_behaviors + 1, dim)
        self.time_embeddings = nn.Embedding(config.num_time_buckets, dim)
        self.dropout = PTUMDropout(config.dropout)
        if kind == "transformer":
            self.layers = nn.ModuleList(PTUMTransformerLayer(config) for _ in range(config.user_num_layers))
        elif kind == "self_attention":
            self.attention = PTUMSelfAttention(dim, config.num_attention_heads, dim)
        elif kind == "gru":
            self.rnn = nn.GRU(dim, dim, batch_first=True)
        elif kind == "lstm":
            self.rnn = nn.LSTM(dim, dim, batch_first=True)
        if kind in ("transformer", "self_attention", "attention"):
            self.pooling = PTUMAdditiveAttention(dim, config.additive_attention_dim)

    def time_buckets(self, time_gaps: torch.Tensor) -> torch.Tensor:
        """Seconds (B, N) -> bucket ids floor(log2(gap + 1)), clamped to the table; NaN and negatives go to 0,
        infinite gaps to the last bucket."""
        gaps = torch.nan_to_num(time_gaps.double(), nan=0.0, posinf=float("inf")).clamp(min=0.0) + 1.0
        buckets = torch.log2(gaps).floor()
        # Exact at powers of two wherever log2 is computed as log(x) / log(2) (ONNX): log2(2) may come out 0.99999.
        buckets = buckets + (torch.pow(2.0, buckets + 1) <= gaps).double() - (torch.pow(2.0, buckets) > gaps).double()
        return buckets.clamp(max=self.num_time_buckets - 1).long()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_gaps: torch.Tensor | None = None):
        # Positions count valid slots from the oldest kept behavior (1-based, 0 = padding): padding-invariant.
        positions = mask.long().cumsum(-1).clamp(max=self.position_embeddings.num_embeddings - 1) * mask
        if self.kind in ("gru", "lstm"):
            x = x + self.position_embeddings(positions)
            if time_gaps is not None:
                x = x + self.time_embeddings(self.time_buckets(time_gaps))
            x, last = _packed_rnn(self.rnn, self.dropout(x) * mask[..., None], mask)
            states = x * mask[..., None]
            return states, last * mask.any(-1, keepdim=True)
        if _is_exporting():
            return self._forward_padded(x, mask, positions, time_gaps)
        padded = _Padded(mask)
        x = padded.pack(x) + self.position_embeddings(padded.pack(positions))
        if time_gaps is not None:
            x = x + self.time_embeddings(self.time_buckets(padded.pack(time_gaps)))
        x = self.dropout(x)
        if self.kind == "transformer":
            for layer in self.layers:
                x = layer.packed(x, padded)
        elif self.kind == "self_attention":
            x = self.dropout(self.attention.packed(x, padded))
        states = padded.pad(x)
        return states, padded.pool(self.pooling.scores(x), states)

    def _forward_padded(self, x, mask, positions, time_gaps):
        """The packed path of `forward` over all (B, N) slots, for export (the number of valid slots is data):
        padding is masked out of attention and pooling instead of left out, which gives the same vectors."""
        x = x + self.position_embeddings(positions)
        if time_gaps is not None:
            x = x + self.time_embeddings(self.time_buckets(time_gaps))
        x = self.dropout(x)
        if self.kind == "transformer":
            for layer in self.layers:
                x = layer(x, mask)
        elif self.kind == "self_attention":
            x = self.dropout(self.attention(x, mask))
        states = x * mask[..., None]
        return states, self.pooling(states, mask)


# ----------------------------------------------------------------------------- models


class PTUMPreTrainedModel(PreTrainedModel):
    config_class = PTUMConfig
    config: PTUMConfig
    base_model_prefix = "ptum"
    main_input_name = "behavior_input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["PTUMTransformerLayer"]
    # `forward` takes `**kwargs` (to name unknown ones), which the Trainer would read as accepting loss kwargs: it
    # would pass `num_items_in_batch` and no longer divide the loss by the gradient accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: PTUMConfig, *inputs, **kwargs):
        config.validate_ptum()  # overrides given to from_pretrained are set after the config's own check
        super().__init__(config, *inputs, **kwargs)

    def _check_forward_kwargs(self, kwargs: dict):
        """Refuse keyword arguments that `forward` does not know, naming them: a misspelled batch key would otherwise
        be dropped without a word. Ignores `num_items_in_batch` and false `output_attentions` / `output_hidden_states`.
        """
        unsupported = [name for name in _UNSUPPORTED_OUTPUT_FLAGS if kwargs.get(name)]
        if unsupported:
            raise ValueError(
                f"{type(self).__name__} does not support {', '.join(f'{name}=True' for name in unsupported)}: PTUM "
                "models return no attention maps and no per-layer hidden states"
            )
        unknown = [name for name in kwargs if name not in (*_IGNORED_FORWARD_KWARGS, *_UNSUPPORTED_OUTPUT_FLAGS)]
        if not unknown:
            return
        parameters = inspect.signature(self.forward).parameters.values()
        accepted = [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        named = []
        for name in unknown:
            close = difflib.get_close_matches(name, accepted, n=1)
            named.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        # Generic text callers (the `feature-extraction` pipeline) pass `input_ids`: say where users go instead.
        hint = _TEXT_INPUT_HINT if "input_ids" in unknown else ""
        raise TypeError(
            f"{type(self).__name__}.forward() got unexpected keyword argument(s) {', '.join(named)}; "
            f"it accepts: {', '.join(accepted)}{hint}"
        )

    def _return_dict(self, return_dict: bool | None) -> bool:
        """`return_dict` as given, else the config's (`True` unless the config says otherwise)."""
        return return_dict if return_dict is not None else self.config.return_dict

    def _init_weights(self, module):
        if isinstance(module, PTUMPretrainedTextEncoder):
            return  # keeps the text encoder's own initialisation (or its pretrained weights)
        # Glorot for weights (as the paper's Keras code) and word vectors of norm ~1: with the usual 0.02 the
        # behavior vectors start ~100x smaller than the position embeddings and pre-training stalls.
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.GRU, nn.LSTM)):
            for name, param in module.named_parameters():
                (nn.init.xavier_uniform_ if "weight" in name else nn.init.zeros_)(param)
        elif isinstance(module, nn.Embedding):
            # Only word embeddings have a padding row; position and time embeddings start small.
            word = module.padding_idx is not None
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5 if word else self.config.initializer_range)
            if word:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, PTUMModel):
            nn.init.normal_(module.mask_embedding, std=self.config.initializer_range)
        elif isinstance(module, PTUMForCTR):
            # Bare parameters: `from_pretrained` leaves them uninitialised memory unless this sets them. Ad biases
            # start at 0 so that an ad never trained on keeps a 0 bias (scored from its text); so do user biases.
            nn.init.zeros_(module.bias)
            for biases in (module.ad_id_bias, module.user_id_bias):
                if biases is not None:
                    nn.init.zeros_(biases)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def register_for_auto_classes(self):
        """Make `save_pretrained` copy this file and the config file beside the weights and map every Auto class,
        so the checkpoint loads with `trust_remote_code=True` where `ptum_hf` is not installed. Affects this instance
        only (transformers' `register_for_auto_class` marks the whole class). The config also names the PTUM
        pipelines (`custom_pipelines`), so `pipeline(task, model=folder, trust_remote_code=True)` finds them."""
        from .pipeline_ptum import REMOTE_PIPELINES  # this import also makes `custom_object_save` copy that file

        self.config.auto_map = dict(REMOTE_AUTO_MAP)
        self.config.custom_pipelines = json.loads(json.dumps(REMOTE_PIPELINES))  # a copy: pipeline() edits it
        self._ships_code = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then: the weights files get the permissions of `config.json` beside them
        (safetensors >= 0.8 writes them through a private temporary file, mode 0600, whatever the umask); a
        `checksums.json` already in the folder is rewritten for the new weights; the source files are copied when
        `register_for_auto_classes` was called."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        _match_config_permissions(save_directory, kwargs.get("variant"))
        if os.path.isfile(os.path.join(save_directory, CHECKSUMS_NAME)):
            write_checksums(save_directory)
        if getattr(self, "_ships_code", False):
            custom_object_save(self, save_directory)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, loading safetensors weights only, after checking the checkpoint's files.

        Pickle weights (`pytorch_model.bin`) can run code when they are read, so a checkpoint that has nothing else
        is refused with an `OSError` naming the file. Pass `use_safetensors=False` to opt in for a checkpoint you
        trust (transformers then reads it with `torch.load(weights_only=True)`), or better convert it once.

        Before transformers opens a weight, an `OSError` also refuses: a sharded index (`*.index.json`) whose
        `weight_map` names anything but a plain file name in the checkpoint's folder (a path, `..`, a symlink out of
        the folder), for local folders and Hub repositories; and, in a local folder with a `checksums.json` (written
        by `ptum_hf.hub.save_for_hub`), a weights file whose sha256 differs from the one recorded there, or that the
        manifest does not list. A config.json of another model type, or with sizes beyond `PTUMConfig`'s bounds, is
        refused with a `ValueError` when the config is read.
        """
        opted_in = kwargs.get("use_safetensors") is False
        if not opted_in:
            kwargs["use_safetensors"] = True
        path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if not opted_in and path is not None:
            _refuse_pickle_only_checkpoint(cls.__name__, path, kwargs, before_loading=True)
        if path is not None:
            _check_checkpoint_files(path, kwargs, pickle_allowed=opted_in)
        try:
            loaded = super().from_pretrained(*args, **kwargs)
        except OSError as error:
            if not opted_in and path is not None:
                _refuse_pickle_only_checkpoint(cls.__name__, path, kwargs, before_loading=False, cause=error)
            raise
        # Loading replaces parameters: re-apply the config's freezing.
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_user_model_if_configured()
        return loaded

    def _freeze_user_model_if_configured(self):
        if self.config.freeze_user_model and hasattr(self, "ptum"):
            self.ptum.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, PTUMPretrainedTextEncoder) and module.frozen:
                module.encoder.requires_grad_(False)

    def freeze_user_model(self):
        """Train only the head from now on (the paper's "no finetune" rows)."""
        self.config.freeze_user_model = True
        self.ptum.requires_grad_(False)

    # -- inference on raw events (the rules: `processing_ptum`, which ships with this file) ------------------------

    def encode(self, users, tokenizer=None, batch_size: int = 64, return_tensors: str = "np"):
        """User embeddings of raw events: `UserEmbeddings(user_ids, embeddings)`, one row per user in order of first
        appearance.

        `users`: a list of event dicts (`user_id`, `timestamp`, `text`), a pandas DataFrame or `datasets.Dataset`
        with those columns, or a log path (CSV, TSV, JSON lines, Parquet). Each user's last `config.max_behaviors`
        behaviors are read, with time gaps in seconds to the last one (as in training and `ptum-hf embed`).
        `tokenizer`: by default the one saved with the checkpoint. `return_tensors`: `"np"` (float32) or `"pt"`."""
        from .processing_ptum import UserEmbeddings

        user_ids, vectors = [], []
        for ids, output in self._run_on_users(users, tokenizer, batch_size, self.base_model):
            user_ids += ids
            vectors.append(output.user_embeddings.float().cpu())
        return UserEmbeddings(user_ids, _as_tensors(torch.cat(vectors), return_tensors))

    def _run_on_users(self, users, tokenizer, batch_size: int, model: nn.Module):
        """Yield (user ids, `model`'s output) per batch of users, in eval mode and without gradients."""
        from .processing_ptum import iter_user_batches, load_tokenizer_of, read_user_events

        events = read_user_events(users)
        if tokenizer is None:  # loaded once per model
            tokenizer = self.__dict__.get("_inference_tokenizer") or load_tokenizer_of(self)
            self.__dict__["_inference_tokenizer"] = tokenizer
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for ids, inputs in iter_user_batches(events, tokenizer, self.config, batch_size):
                    yield ids, model(**{k: v.to(self.device) for k, v in inputs.items()}, return_dict=True)
        finally:
            self.train(was_training)


def _as_tensors(values: torch.Tensor, return_tensors: str):
    if return_tensors not in ("np", "pt"):
        raise ValueError(f"return_tensors must be 'np' (numpy) or 'pt' (torch), got {return_tensors!r}")
    return values.numpy() if return_tensors == "np" else values


_SAFE_WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # what use_safetensors=False reads


def _with_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, _, ext = name.partition(".")  # model.safetensors.index.json -> model.<variant>.safetensors.index.json
    return f"{stem}.{variant}.{ext}"


def _pickle_refusal(what: str, model_class: str) -> OSError:
    return OSError(
        f"{what}. Pickle files can run arbitrary code when they are loaded, so PTUM models load safetensors weights "
        "only. If you trust this checkpoint, opt in with `from_pretrained(..., use_safetensors=False)`. Better, "
        f"convert it once, in an isolated environment: `{model_class}.from_pretrained(path, use_safetensors=False)"
        ".save_pretrained(new_path)` writes model.safetensors (for a Hub repository, the Space "
        "https://huggingface.co/spaces/safetensors/convert opens a pull request with the conversion)."
    )


def _refuse_pickle_only_checkpoint(
    model_class: str, path, kwargs: dict, before_loading: bool, cause: Exception | None = None
):
    """Raise the pickle refusal if `path` (a local folder, a weights file or a Hub repo) has pickle weights and no
    safetensors ones; otherwise return and let transformers load, or report whatever else is wrong."""
    if kwargs.get("gguf_file") is not None or kwargs.get("state_dict") is not None:
        return
    path = os.fspath(path)
    subfolder = kwargs.get("subfolder") or ""
    variant = kwargs.get("variant")
    if os.path.isfile(os.path.join(subfolder, path)):  # transformers reads a weights file given directly, any format
        if not path.endswith(".safetensors"):
            raise _pickle_refusal(f"{path!r} is not a safetensors file (it is read as pickle weights)", model_class)
        return
    names = [_with_variant(name, variant) for name in _PICKLE_WEIGHTS_NAMES]
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        if any(os.path.isfile(os.path.join(folder, _with_variant(n, variant))) for n in _SAFE_WEIGHTS_NAMES):
            return
        found = [name for name in names if os.path.isfile(os.path.join(folder, name))]
        if found:
            raise _pickle_refusal(
                f"The checkpoint folder {folder!r} holds only pickle weights ({', '.join(found)})", model_class
            ) from cause
        return
    if before_loading:  # a Hub repo: look only once transformers has found no safetensors file there
        return
    try:
        from transformers.utils import has_file

        found = [
            name
            for name in names
            if has_file(
                path,
                f"{subfolder}/{name}" if subfolder else name,
                revision=kwargs.get("revision"),
                token=kwargs.get("token"),
                proxies=kwargs.get("proxies"),
                local_files_only=bool(kwargs.get("local_files_only")),
                cache_dir=kwargs.get("cache_dir"),
            )
        ]
    except Exception:  # an unknown repo, a gated one, no network: keep transformers' own error
        return
    if found:
        raise _pickle_refusal(
            f"The Hub repository {path!r} holds only pickle weights ({', '.join(found)})", model_class
        ) from cause


# ----------------------------------------------------------------------------- checkpoint files

CHECKSUMS_NAME = "checksums.json"  # written by ptum_hf.hub beside the weights; transformers never reads it
_CHECKSUMS_FORMAT = "ptum-checksums"
_HASH_CHUNK_BYTES = 1 << 20


def _is_plain_file_name(name) -> bool:
    """A file name that stays in the folder it is joined to, on POSIX and Windows: no separator, no `..`, no drive."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(char in name for char in "/\\\0")
        and not ntpath.splitdrive(name)[0]
    )


def _is_within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _hub_cache_blobs(folder: str) -> str | None:
    """The `blobs` folder of a Hub cache repository if `folder` is (inside) one of its snapshots: the cache's files
    are symlinks from `models--org--name/snapshots/<commit>/` to `models--org--name/blobs/`."""
    folder = os.path.abspath(folder)
    while True:
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        if os.path.basename(parent) == "snapshots" and os.path.basename(os.path.dirname(parent)).startswith("models--"):
            return os.path.join(os.path.dirname(parent), "blobs")
        folder = parent


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read the {what} {path!r}: {error}") from error


def _check_weight_map(index_path: str) -> list[str]:
    """Refuse a sharded index whose `weight_map` could make transformers read a file outside the index's folder (it
    joins each entry to the folder as it is: `../x` or an absolute path would be followed). Returns the shard names."""
    index = _read_json(index_path, "sharded-checkpoint index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise OSError(f"the sharded-checkpoint index {index_path!r} has no weight_map object")
    folder = os.path.dirname(os.path.abspath(index_path))
    roots = [os.path.realpath(folder)]
    blobs = _hub_cache_blobs(folder)
    if blobs is not None:
        roots.append(os.path.realpath(blobs))
    shards = sorted({value for value in weight_map.values() if isinstance(value, str)})
    for key, value in weight_map.items():
        if not _is_plain_file_name(value):
            raise OSError(
                f"refusing the sharded-checkpoint index {index_path!r}: its weight_map entry {key!r} -> {value!r} is "
                "not a plain file name in the checkpoint's folder (no path separators, '..', absolute paths or "
                "drives), so it could make the loader read a file outside the checkpoint"
            )
    for name in shards:
        shard = os.path.join(folder, name)
        if os.path.islink(shard) and not any(_is_within(os.path.realpath(shard), root) for root in roots):
            key = next(key for key, value in weight_map.items() if value == name)
            raise OSError(
                f"refusing the sharded-checkpoint index {index_path!r}: its weight_map entry {key!r} -> {name!r} is "
                f"a symlink to {os.path.realpath(shard)!r}, outside the checkpoint's folder"
            )
    return shards


def _index_names(variant: str | None, pickle_allowed: bool) -> list[str]:
    names = [
        name
        for name in (*_SAFE_WEIGHTS_NAMES, *(_PICKLE_WEIGHTS_NAMES if pickle_allowed else ()))
        if name.endswith(".index.json")
    ]
    return [_with_variant(name, variant) for name in names]


def _check_checkpoint_files(path, kwargs: dict, pickle_allowed: bool):
    """The checks `from_pretrained` runs before transformers reads a weight: sharded indexes (local folders and Hub
    repositories) and, in local folders, `checksums.json`."""
    if kwargs.get("gguf_file") is not None or kwargs.get("state_dict") is not None:
        return
    path = os.fspath(path)
    subfolder = kwargs.get("subfolder") or ""
    variant = kwargs.get("variant")
    if os.path.isfile(os.path.join(subfolder, path)):
        return  # a weights file given directly: no index, no manifest
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        for name in _index_names(variant, pickle_allowed):
            if os.path.isfile(os.path.join(folder, name)):
                _check_weight_map(os.path.join(folder, name))
        verify_checksums(folder, variant)
        return
    _check_hub_indexes(path, kwargs, _index_names(variant, pickle_allowed))


def _check_hub_indexes(repo_id: str, kwargs: dict, names: list[str]):
    """Check the sharded index a Hub repository would be loaded from, as the cache resolves it.

    The revision is first resolved to a commit, as transformers >= 5 does, and pinned in `kwargs`, so that transformers
    then reads the same index. When it cannot be resolved (no network, unknown repo), only the cache is looked at: that
    is where transformers then falls back to. Costs at most one request per index name (none when the cache already
    knows the file or its absence); every failure is left to transformers to report.
    """
    try:
        from transformers.utils.hub import cached_file
    except ImportError:
        return
    local_only = bool(kwargs.get("local_files_only"))
    try:
        from transformers.utils.hub import resolve_revision
    except ImportError:  # transformers 4: each download resolves the revision again
        resolve_revision = None
    if resolve_revision is not None:
        try:
            revision = resolve_revision(
                repo_id,
                kwargs.get("revision"),
                token=kwargs.get("token"),
                local_files_only=local_only,
                cache_dir=kwargs.get("cache_dir"),
            )
        except Exception:
            revision = kwargs.get("revision")
        pinned = getattr(revision, "resolved", None) is not None or (
            isinstance(revision, str) and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
        )
        if revision is not None:
            kwargs["revision"] = revision
        local_only = local_only or not pinned
    for name in names:
        try:
            resolved = cached_file(
                repo_id,
                name,
                subfolder=kwargs.get("subfolder") or "",
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                proxies=kwargs.get("proxies"),
                local_files_only=local_only,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                _raise_exceptions_for_gated_repo=False,
            )
        except Exception:  # an invalid repo id, a gated repo: transformers reports it
            continue
        if resolved:
            _check_weight_map(resolved)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _is_weights_file_name(name: str) -> bool:
    return name.endswith((".safetensors", ".safetensors.index.json"))


def _weights_files(folder: str, variant: str | None) -> list[str]:
    """The safetensors files `from_pretrained` reads from `folder`: the single file, else the index and its shards."""
    single = _with_variant(_SAFE_WEIGHTS_NAMES[0], variant)
    if os.path.isfile(os.path.join(folder, single)):
        return [single]
    index = _with_variant(_SAFE_WEIGHTS_NAMES[1], variant)
    if os.path.isfile(os.path.join(folder, index)):
        return [index, *_check_weight_map(os.path.join(folder, index))]
    return []


def write_checksums(folder) -> str | None:
    """Write `checksums.json` into `folder`: the sha256 of every safetensors weights file there (shards and their
    index included), which `from_pretrained` verifies before loading. Returns its path, or `None` (and writes
    nothing) when the folder has no safetensors file."""
    folder = os.fspath(folder)
    names = sorted(
        name
        for name in os.listdir(folder)
        if _is_weights_file_name(name) and os.path.isfile(os.path.join(folder, name))
    )
    if not names:
        return None
    manifest = {
        "format": _CHECKSUMS_FORMAT,
        "version": 1,
        "algorithm": "sha256",
        "files": {name: _sha256(os.path.join(folder, name)) for name in names},
    }
    path = os.path.join(folder, CHECKSUMS_NAME)
    tmp = os.path.join(folder, f".tmp-{CHECKSUMS_NAME}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:  # open(): the umask's mode, as config.json
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_checksums(path: str) -> dict[str, str]:
    manifest = _read_json(path, "checksum manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != _CHECKSUMS_FORMAT
        or manifest.get("algorithm") != "sha256"
        or not isinstance(files, dict)
    ):
        raise OSError(
            f"the checksum manifest {path!r} is not one ptum_hf writes (format {_CHECKSUMS_FORMAT!r}, algorithm "
            "'sha256', a 'files' object); delete it to load the checkpoint without verification"
        )
    for name, digest in files.items():
        if not _is_plain_file_name(name) or not isinstance(digest, str) or len(digest) != 64:
            raise OSError(f"the checksum manifest {path!r} has an invalid entry {name!r}: {digest!r}")
    return {name: digest.lower() for name, digest in files.items()}


def verify_checksums(folder, variant: str | None = None):
    """If `folder` has a `checksums.json`, check the sha256 of every weights file `from_pretrained` would read there
    (streamed in 1 MiB chunks); raise an `OSError` naming the first file that differs or that the manifest does not
    list. A folder without the manifest (older checkpoints, Trainer checkpoints, plain `save_pretrained`) passes."""
    folder = os.fspath(folder)
    path = os.path.join(folder, CHECKSUMS_NAME)
    if not os.path.isfile(path):
        return
    expected = _read_checksums(path)
    for name in _weights_files(folder, variant):
        if name not in expected:
            raise OSError(
                f"{os.path.join(folder, name)!r} is not listed in {path!r}: the manifest is stale or incomplete. "
                f"Save the checkpoint again, or delete {CHECKSUMS_NAME} to load it without verification"
            )
        actual = _sha256(os.path.join(folder, name))
        if actual != expected[name]:
            raise OSError(
                f"{os.path.join(folder, name)!r} does not match the sha256 recorded in {path!r} (expected "
                f"{expected[name]}, got {actual}): the file was corrupted or changed after it was saved"
            )


def _match_config_permissions(folder, variant: str | None):
    """Give the weights files just saved the permission bits of `config.json`, which is written with `open()` and
    so honours the umask. safetensors >= 0.8 writes through a temporary file created 0600 and renames it, leaving the
    weights the one file of a checkpoint that other users cannot read (safetensors issue #782)."""
    folder = os.fspath(folder)
    try:
        mode = os.stat(os.path.join(folder, "config.json")).st_mode & 0o666
    except OSError:
        return
    for name in _weights_files(folder, variant):
        target = os.path.join(folder, name)
        try:
            if not os.path.islink(target) and os.stat(target).st_mode & 0o777 != mode:
                os.chmod(target, mode)
        except OSError:  # a file system without POSIX permissions, or a file that is not ours: leave it as it is
            pass


class PTUMModel(PTUMPreTrainedModel):
    """The PTUM user model: behavior encoder + user encoder. No head.

    Example:

    ```python
    >>> out = model(behavior_input_ids, behavior_attention_mask, history_indices, history_time_gaps)
    >>> out.user_embeddings.shape  # (batch_size, hidden_size)
    ```
    """

    def __init__(self, config: PTUMConfig):
        super().__init__(config)
        self.behavior_encoder = build_behavior_encoder(config)
        self.user_encoder = PTUMUserEncoder(config)
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        buckets = config.behavior_id_buckets
        self.behavior_id_embeddings = nn.Embedding(buckets, config.hidden_size) if buckets else None
        self.gradient_checkpointing = False  # set by `gradient_checkpointing_enable()` / the Trainer's flag
        self.post_init()
        self._freeze_user_model_if_configured()

    @classmethod
    def from_text_encoder(cls, name_or_path: str, freeze: bool = False, **config_overrides) -> "PTUMModel":
        """A PTUM model whose behavior encoder starts from a pretrained Hugging Face text encoder (e.g. MiniLM)."""
        text_encoder = AutoModel.from_pretrained(name_or_path)
        text_config = text_encoder.config.to_dict()
        config = PTUMConfig(
            behavior_encoder_type="pretrained",
            text_encoder_config=text_config,
            freeze_text_encoder=freeze,
            vocab_size=text_encoder.config.vocab_size,
            pad_token_id=text_encoder.config.pad_token_id or 0,
            **config_overrides,
        )
        model = cls(config)
        model.behavior_encoder.encoder.load_state_dict(text_encoder.state_dict())
        return model

    def encode_behaviors(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder: nn.Module | None = None,
        bucket_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode behaviors alone: (M, L) token ids -> (M, hidden_size). Cache these to embed many users.

        With `config.behavior_id_buckets`, `bucket_ids` (M,) adds each behavior's id embedding (-1: text only)."""
        encoded = self._encode_texts(input_ids, attention_mask, encoder)
        if self.behavior_id_embeddings is None or bucket_ids is None:
            return encoded
        buckets = self.behavior_id_embeddings.num_embeddings
        checked = bucket_ids.numel() and not _is_exporting()  # a value check: the exported graph has none
        if bucket_ids.shape != encoded.shape[:1] or (checked and int(bucket_ids.max()) >= buckets):
            raise ValueError(
                f"behavior_bucket_ids must be ({encoded.shape[0]},) ids in [-1, {buckets}); got shape "
                f"{tuple(bucket_ids.shape)}"
            )
        known = (bucket_ids >= 0).unsqueeze(-1)
        return encoded + self.behavior_id_embeddings(bucket_ids.clamp(min=0)) * known

    def _encode_texts(self, input_ids, attention_mask, encoder) -> torch.Tensor:
        _check_token_ids(input_ids, self.config.vocab_size)
        if input_ids.shape[0] == 0:  # no behavior in the batch (only users without history): nothing to encode
            return self.mask_embedding.new_zeros(0, self.config.hidden_size)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        # Drop all-padding token columns: L is the longest behavior here, not a fixed maximum. An exported graph
        # takes L as given (a value cannot size it, and a cut to the maximum breaks the RNN's export): the export
        # bounds L by max_tokens_per_behavior instead.
        if not _is_exporting():
            length = max(int(attention_mask.sum(-1).max()) if attention_mask.numel() else 1, 1)
            length = min(length, self.config.max_tokens_per_behavior)
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        encoder = self.behavior_encoder if encoder is None else encoder
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The behavior encoder holds most of a step's activations. Recomputed in the backward a chunk of
            # behaviors at a time, they never exist for more than one chunk: memory stops growing with the batch's
            # tokens, for one more forward pass of the behavior encoder.
            # Chunks of behaviors sorted by length: each chunk then holds few lengths (few attention blocks).
            order = torch.argsort(attention_mask.sum(-1), stable=True)
            ids, mask = input_ids[order], attention_mask[order]
            chunks = zip(ids.split(CHECKPOINT_CHUNK_BEHAVIORS), mask.split(CHECKPOINT_CHUNK_BEHAVIORS))
            encoded = torch.cat([_checkpoint(encoder, i, m) for i, m in chunks])
            return encoded.index_select(0, torch.argsort(order))
        return encoder(input_ids, attention_mask)

    def gather_behaviors(self, behavior_embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Look up rows of the behavior table; -1 (padding) gives zeros and -2 the learned mask vector."""
        zeros = behavior_embeddings.new_zeros(1, behavior_embeddings.shape[-1])
        mask = self.mask_embedding.to(behavior_embeddings.dtype)[None]
        table = torch.cat([behavior_embeddings, zeros, mask])
        num = behavior_embeddings.shape[0]
        rows = torch.where(indices == PAD_INDEX, num, torch.where(indices == MASK_INDEX, num + 1, indices))
        return table[rows]

    def encode_users(
        self, behavior_embeddings: torch.Tensor, history_indices: torch.Tensor, history_time_gaps=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, D) behavior table + (B, N) history -> ((B, N, D) states, (B, D) user vectors)."""
        mask = history_indices != PAD_INDEX
        x = self.gather_behaviors(behavior_embeddings, history_indices)
        return self.user_encoder(x, mask, history_time_gaps)

    def encode_user_views(self, behavior_embeddings: torch.Tensor, views: list) -> list[torch.Tensor]:
        """User vectors of several histories over one behavior table, in one pass of the user encoder.

        `views`: (history_indices (B_i, N_i), history_time_gaps (B_i, N_i) or None) pairs -> [(B_i, D)]. The rows are
        stacked (right-padded to the widest view); every row is encoded on its own, so this equals one
        `encode_users` call per view."""
        if not views:
            return []
        with_gaps = [gaps is not None for _, gaps in views]
        if len(views) == 1 or (any(with_gaps) and not all(with_gaps)):
            return [self.encode_users(behavior_embeddings, indices, gaps)[1] for indices, gaps in views]
        width = max(indices.shape[1] for indices, _ in views)
        indices = torch.cat([F.pad(i, (0, width - i.shape[1]), value=PAD_INDEX) for i, _ in views])
        gaps = None
        if all(with_gaps):
            gaps = torch.cat([F.pad(g.double(), (0, width - g.shape[1]), value=0.0) for _, g in views])
        _, users = self.encode_users(behavior_embeddings, indices, gaps)
        return list(users.split([i.shape[0] for i, _ in views]))

    def forward(
        self,
        behavior_input_ids: torch.LongTensor | None = None,
        behavior_attention_mask: torch.LongTensor | None = None,
        history_indices: torch.LongTensor | None = None,
        history_time_gaps: torch.Tensor | None = None,
        behavior_embeddings: torch.FloatTensor | None = None,
        behavior_bucket_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PTUMModelOutput | tuple:
        r"""
        Args:
            behavior_input_ids (`torch.LongTensor` of shape `(num_unique_behaviors, max_tokens)`): token ids of the
                batch's unique behaviors.
            behavior_attention_mask (`torch.LongTensor` of shape `(num_unique_behaviors, max_tokens)`).
            history_indices (`torch.LongTensor` of shape `(batch_size, num_behaviors)`): rows of the behavior table,
                oldest first, -1 for padding, -2 for a masked slot.
            history_time_gaps (`torch.Tensor` of shape `(batch_size, num_behaviors)`, *optional*): seconds from each
                behavior to the reference time.
            behavior_embeddings (`torch.FloatTensor` of shape `(num_unique_behaviors, hidden_size)`, *optional*):
                pre-computed behavior vectors (from `encode_behaviors`); replaces the two token inputs.
            behavior_bucket_ids (`torch.LongTensor` of shape `(num_unique_behaviors,)`, *optional*): each behavior's
                id bucket when `config.behavior_id_buckets` > 0 (-1: text only); the collators give it.
            return_dict (`bool`, *optional*): return a `ModelOutput` (the default, from `config.return_dict`) or, when
                `False`, the tuple of its fields that are not `None` (`output.to_tuple()`, loss first in the heads).

        Any other keyword argument is refused with a `TypeError` that names it (see `_check_forward_kwargs`).
        """
        self._check_forward_kwargs(kwargs)
        if history_indices is None:
            raise ValueError("history_indices is required: (batch_size, num_behaviors) rows of the behavior table")
        if behavior_embeddings is None:
            if behavior_input_ids is None:
                raise ValueError("give behavior_input_ids (and behavior_attention_mask) or behavior_embeddings")
            behavior_embeddings = self.encode_behaviors(
                behavior_input_ids, behavior_attention_mask, bucket_ids=behavior_bucket_ids
            )
        _check_indices(history_indices, behavior_embeddings.shape[0], "history_indices")
        states, users = self.encode_users(behavior_embeddings, history_indices, history_time_gaps)
        output = PTUMModelOutput(
            user_embeddings=users, last_hidden_state=states, behavior_embeddings=behavior_embeddings
        )
        return output if self._return_dict(return_dict) else output.to_tuple()


def _checkpoint(function, *args):
    # Always non-reentrant, whatever kwargs `gradient_checkpointing_enable` got: the inputs are token ids, and a
    # reentrant checkpoint gives no parameter gradients when no input requires grad. It restores the RNG state, so
    # the recomputed dropout masks are the forward's.
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


def _check_token_ids(input_ids: torch.Tensor, vocab_size: int):
    """Token ids must index the embedding table; say so instead of failing inside the lookup (an IndexError on CPU,
    a device-side assert on CUDA). Costs one min and one max; the offending values are gathered only on failure."""
    if input_ids is None:
        raise ValueError("behavior_input_ids is required: (num_unique_behaviors, max_tokens) token ids")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"behavior_input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(
            f"behavior_input_ids must be 2-D (num_unique_behaviors, max_tokens), got shape {tuple(input_ids.shape)}"
        )
    if not input_ids.numel() or _is_exporting():  # value checks: an exported graph checks shapes and dtypes only
        return
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync
    if low < 0 or high >= vocab_size:
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)].unique()
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (", ..." if bad.numel() > 8 else "")
        raise ValueError(
            f"behavior_input_ids must be token ids in [0, vocab_size={vocab_size}); got {bad.numel()} distinct "
            f"value(s) outside it: {shown} (the tokenizer and config.vocab_size do not match?)"
        )


def _check_buckets(buckets: torch.Tensor, count: int, name: str):
    """Id buckets must be in [0, count), or -1 for an id scored as new."""
    if buckets.numel():
        low, high = int(buckets.min()), int(buckets.max())
        if low < -1 or high >= count:
            raise ValueError(f"{name} must hold buckets in [0, {count}) or -1; got [{low}, {high}]")


def _bucket_bias(biases: torch.Tensor, buckets: torch.LongTensor) -> torch.Tensor:
    """Each bucket's bias; 0 for a bucket of -1."""
    return biases[buckets.clamp(min=0)] * (buckets >= 0)


def _check_indices(indices: torch.Tensor, num_behaviors: int, name: str):
    if _is_exporting():  # a value check, as in `_check_token_ids`
        return
    if indices.numel() and (int(indices.max()) >= num_behaviors or int(indices.min()) < MASK_INDEX):
        raise ValueError(
            f"{name} must hold rows of the behavior table in [0, {num_behaviors}) or -1 (padding) / -2 (mask); "
            f"got values in [{int(indices.min())}, {int(indices.max())}]"
        )


def _candidate_loss(user: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor | None):
    """Dot-product scores of (B, ..., C, D) candidates against (B, D) users; softmax cross-entropy over C.

    Returns (logits (B, ..., C), loss, top-1 accuracy); labels of -100 are ignored, and a batch without any
    labelled example gives a zero loss that still has a gradient.
    """
    shape = candidates.shape
    logits = torch.einsum("bcd,bd->bc", candidates.reshape(shape[0], -1, shape[-1]), user).view(shape[:-1])
    if labels is None:
        return logits, None, None
    flat_logits, flat_labels = logits.reshape(-1, shape[-2]).float(), labels.reshape(-1)
    valid = flat_labels != IGNORE_INDEX
    if not bool(valid.any()):
        zero = flat_logits.sum() * 0.0
        return logits, zero, zero.detach()
    loss = F.cross_entropy(flat_logits[valid], flat_labels[valid])
    accuracy = (flat_logits[valid].argmax(-1) == flat_labels[valid]).float().mean()
    return logits, loss, accuracy


def _table_loss(user: torch.Tensor, table: torch.Tensor, targets: torch.Tensor | None):
    """Dot-product scores of (B, D) users against every row of the (M, D) behavior table; each of a user's
    (B, T) target rows (-1: none) is one softmax cross-entropy over the M rows.

    Returns (logits (B, M), mean loss over targets, share of users whose top-scored row is one of their targets)."""
    logits = user @ table.T
    if targets is None:
        return logits, None, None
    valid = targets >= 0
    log_probs = logits.float().log_softmax(-1).gather(1, targets.clamp(min=0))
    loss = -(log_probs * valid).sum() / valid.sum().clamp(min=1)
    hit = ((targets == logits.argmax(-1, keepdim=True)) & valid).any(-1)
    users = valid.any(-1)
    accuracy = (hit & users).sum().float() / users.sum().clamp(min=1)
    return logits, loss, accuracy.detach()


class PTUMForPretraining(PTUMPreTrainedModel):
    """PTUM with its two self-supervised tasks: masked behavior prediction (MBP) and next-K behaviors prediction
    (NBP). Loss = MBP + lambda * NBP, each a softmax over the positive and P negatives scored by dot product. With
    `config.use_bag`, a third task: bag prediction (every behavior of a partly hidden history, scored against the
    whole behavior table of the batch)."""

    def __init__(self, config: PTUMConfig):
        super().__init__(config)
        self.ptum = PTUMModel(config)
        self.post_init()
        self._freeze_user_model_if_configured()

    def forward(
        self,
        behavior_input_ids: torch.LongTensor | None = None,
        behavior_attention_mask: torch.LongTensor | None = None,
        mbp_history_indices: torch.LongTensor | None = None,
        mbp_history_time_gaps: torch.Tensor | None = None,
        mbp_candidate_indices: torch.LongTensor | None = None,
        mbp_labels: torch.LongTensor | None = None,
        nbp_history_indices: torch.LongTensor | None = None,
        nbp_history_time_gaps: torch.Tensor | None = None,
        nbp_candidate_indices: torch.LongTensor | None = None,
        nbp_labels: torch.LongTensor | None = None,
        bag_history_indices: torch.LongTensor | None = None,
        bag_history_time_gaps: torch.Tensor | None = None,
        bag_target_indices: torch.LongTensor | None = None,
        behavior_embeddings: torch.FloatTensor | None = None,
        behavior_bucket_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PTUMForPretrainingOutput | tuple:
        r"""
        Args:
            behavior_input_ids, behavior_attention_mask (`(num_unique_behaviors, max_tokens)`): the behavior table.
            mbp_history_indices (`(batch_size, n1)`): the history with one slot set to -2 (masked).
            mbp_candidate_indices (`(batch_size, num_negatives + 1)`): the masked behavior and its negatives.
            mbp_labels (`(batch_size,)`): position of the positive among the candidates; -100 to ignore.
            nbp_history_indices (`(batch_size, n2)`): the history before the next K behaviors.
            nbp_candidate_indices (`(batch_size, num_next, num_negatives + 1)`): each next behavior and negatives.
            nbp_labels (`(batch_size, num_next)`): positions of the positives; -100 to ignore.
            bag_history_indices (`(batch_size, n3)`): the history with some slots hidden (-1), for `config.use_bag`.
            bag_target_indices (`(batch_size, t)`): rows of the behaviors to predict from it (-1: none).
            *_history_time_gaps (same shape as the history): seconds to the view's reference time.
            return_dict (`bool`, *optional*): `False` returns `output.to_tuple()` (see `PTUMModel.forward`).
        """
        self._check_forward_kwargs(kwargs)
        if behavior_embeddings is None:
            behavior_embeddings = self.ptum.encode_behaviors(
                behavior_input_ids, behavior_attention_mask, bucket_ids=behavior_bucket_ids
            )
        num = behavior_embeddings.shape[0]
        fields = {}
        losses = []
        # The behavior table is encoded once and shared by both views and all candidates; both views go through the
        # user encoder together (one pass over 2B rows: larger matmuls, half the per-call overhead).
        views = {}
        if self.config.use_mbp and mbp_history_indices is not None:
            _check_indices(mbp_history_indices, num, "mbp_history_indices")
            _check_indices(mbp_candidate_indices, num, "mbp_candidate_indices")
            views["mbp"] = (mbp_history_indices, mbp_history_time_gaps)
        if self.config.use_nbp and nbp_history_indices is not None:
            _check_indices(nbp_history_indices, num, "nbp_history_indices")
            _check_indices(nbp_candidate_indices, num, "nbp_candidate_indices")
            views["nbp"] = (nbp_history_indices, nbp_history_time_gaps)
        if self.config.use_bag and bag_history_indices is not None:
            _check_indices(bag_history_indices, num, "bag_history_indices")
            if bag_target_indices is not None:
                _check_indices(bag_target_indices, num, "bag_target_indices")
            views["bag"] = (bag_history_indices, bag_history_time_gaps)
        users = dict(zip(views, self.ptum.encode_user_views(behavior_embeddings, list(views.values()))))
        for task, candidate_indices, labels in (
            ("mbp", mbp_candidate_indices, mbp_labels),
            ("nbp", nbp_candidate_indices, nbp_labels),
        ):
            if task not in users:
                continue
            candidates = self.ptum.gather_behaviors(behavior_embeddings, candidate_indices)
            logits, loss, accuracy = _candidate_loss(users[task], candidates, labels)
            fields.update({f"{task}_logits": logits, f"{task}_loss": loss, f"{task}_accuracy": accuracy})
            if loss is not None:
                losses.append(loss if task == "mbp" else self.config.nbp_weight * loss)
        if "bag" in users:
            logits, loss, accuracy = _table_loss(users["bag"], behavior_embeddings, bag_target_indices)
            fields.update({"bag_logits": logits, "bag_loss": loss, "bag_accuracy": accuracy})
            if loss is not None:
                losses.append(self.config.bag_weight * loss)
        # Every field is given at construction: a `ModelOutput` field set later is not placed in field order (loss
        # would not come first in `to_tuple()`), nor, in transformers 4.x, among the output's keys at all.
        output = PTUMForPretrainingOutput(loss=sum(losses) if losses else None, **fields)
        return output if self._return_dict(return_dict) else output.to_tuple()


class PTUMForDemographicClassification(PTUMPreTrainedModel):
    """PTUM user model with one linear classifier per label head (for example `age` with 4 classes and `gender`
    with 2); the loss is summed over heads. Works with the Trainer (`labels` is the only label argument)."""

    def __init__(self, config: PTUMConfig):
        super().__init__(config)
        self.ptum = PTUMModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden_size) if config.classifier_layer_norm else nn.Identity()
        self.classifier = nn.Linear(config.hidden_size, sum(config.label_heads.values()))
        self.post_init()
        self._freeze_user_model_if_configured()

    def split_logits(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., sum of classes) -> {head name: (..., classes)} in `config.label_heads` order."""
        return dict(zip(self.config.label_heads, logits.split(list(self.config.label_heads.values()), dim=-1)))

    def predict_proba(self, users, tokenizer=None, batch_size: int = 64, return_tensors: str = "np"):
        """Class probabilities of raw events (`users` as in `encode`): `UserProbabilities(user_ids, probabilities,
        class_names)`, `probabilities[head]` of shape (num_users, num_classes), columns in `class_names[head]` order
        (`config.label_names`, or the class ids as strings)."""
        from .processing_ptum import UserProbabilities, class_names

        names = class_names(self.config)
        user_ids, chunks = [], {head: [] for head in names}
        for ids, output in self._run_on_users(users, tokenizer, batch_size, self):
            user_ids += ids
            for head, logits in self.split_logits(output.logits).items():
                chunks[head].append(logits.float().softmax(-1).cpu())
        probabilities = {head: _as_tensors(torch.cat(parts), return_tensors) for head, parts in chunks.items()}
        return UserProbabilities(user_ids, probabilities, names)

    def predict(self, users, tokenizer=None, batch_size: int = 64):
        """The most probable class name per label head of raw events (`users` as in `encode`):
        `UserPredictions(user_ids, labels)`, `labels[head]` a list with one class name per user."""
        from .processing_ptum import UserPredictions

        result = self.predict_proba(users, tokenizer, batch_size, return_tensors="pt")
        labels = {
            head: [result.class_names[head][i] for i in probabilities.argmax(-1).tolist()]
            for head, probabilities in result.probabilities.items()
        }
        return UserPredictions(result.user_ids, labels)

    def forward(
        self,
        behavior_input_ids: torch.LongTensor | None = None,
        behavior_attention_mask: torch.LongTensor | None = None,
        history_indices: torch.LongTensor | None = None,
        history_time_gaps: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        behavior_embeddings: torch.FloatTensor | None = None,
        behavior_bucket_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PTUMClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, num_heads)`, or `(batch_size,)` with one head,
                *optional*): class ids per head in `config.label_heads` order; -100 where a label is missing.
            return_dict (`bool`, *optional*): `False` returns `output.to_tuple()` (see `PTUMModel.forward`).
        """
        self._check_forward_kwargs(kwargs)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_user_model):
            user = self.ptum(
                behavior_input_ids,
                behavior_attention_mask,
                history_indices,
                history_time_gaps,
                behavior_embeddings,
                behavior_bucket_ids=behavior_bucket_ids,
                return_dict=True,
            ).user_embeddings
        logits = self.classifier(self.dropout(self.norm(user)))
        loss = None
        if labels is not None:
            labels = labels.view(labels.shape[0], -1)
            if labels.shape[1] != len(self.config.label_heads):
                raise ValueError(
                    f"labels has {labels.shape[1]} columns but config.label_heads has "
                    f"{len(self.config.label_heads)} heads: {list(self.config.label_heads)}"
                )
            loss = logits.float().sum() * 0.0  # keeps a gradient when every label is missing
            for column, head_logits in enumerate(self.split_logits(logits).values()):
                head_labels = labels[:, column]
                valid = head_labels != IGNORE_INDEX
                if bool(valid.any()):
                    loss = loss + F.cross_entropy(head_logits[valid].float(), head_labels[valid])
        output = PTUMClassifierOutput(loss=loss, logits=logits, user_embeddings=user)
        return output if self._return_dict(return_dict) else output.to_tuple()


class PTUMForCTR(PTUMPreTrainedModel):
    """PTUM user model scoring a candidate ad: the ad's title and description are encoded by the behavior encoder
    (shared with the user side unless `config.share_ad_encoder=False`), combined by additive attention as in the
    paper's ad encoder, and the click logit is the user/ad dot product plus a bias (plus, with `config.ad_prior`, a
    linear score of the ad vector alone; with `config.ad_id_bias`, a learned bias per ad identity; with
    `config.user_id_buckets`, a learned bias per user identity)."""

    def __init__(self, config: PTUMConfig):
        super().__init__(config)
        self.ptum = PTUMModel(config)
        self.ad_encoder = None if config.share_ad_encoder else build_behavior_encoder(config)
        self.ad_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.ad_pooling = PTUMAdditiveAttention(config.hidden_size, config.additive_attention_dim)
        self.bias = nn.Parameter(torch.zeros(()))
        self.ad_prior = nn.Linear(config.hidden_size, 1) if config.ad_prior else None
        self.ad_id_bias = nn.Parameter(torch.zeros(config.behavior_id_buckets)) if config.ad_id_bias else None
        buckets = config.user_id_buckets
        self.user_id_bias = nn.Parameter(torch.zeros(buckets)) if buckets else None
        self.post_init()
        self._freeze_user_model_if_configured()

    def encode_ads(self, behavior_embeddings, title_indices, description_indices=None, ad_behavior_embeddings=None):
        """(B,) title and description rows -> (B, D) ad vectors. A description of -1 is left out of the pooling."""
        table = behavior_embeddings if ad_behavior_embeddings is None else ad_behavior_embeddings
        if description_indices is None:
            description_indices = torch.full_like(title_indices, PAD_INDEX)
        parts = torch.stack([title_indices, description_indices], dim=1)
        vectors = self.ad_projection(self.ptum.gather_behaviors(table, parts))
        return self.ad_pooling(vectors, parts != PAD_INDEX)

    def ad_bias(self, behavior_bucket_ids: torch.LongTensor | None, ad_title_indices: torch.LongTensor):
        """(B,) each ad's learned bias (`config.ad_id_bias`), by its title's id bucket; 0 for a bucket of -1."""
        if behavior_bucket_ids is None:
            raise ValueError("ad_id_bias needs behavior_bucket_ids (the collators give them with behavior_id_buckets)")
        buckets = behavior_bucket_ids[ad_title_indices]
        return _bucket_bias(self.ad_id_bias, buckets)

    def user_bias(self, user_bucket_ids: torch.LongTensor | None, batch_size: int):
        """(B,) each user's learned bias (`config.user_id_buckets`); 0 for a bucket of -1 (a user scored as new)."""
        if user_bucket_ids is None:
            raise ValueError(
                "user_id_buckets needs user_bucket_ids (B,): the CTR collator gives them; pass -1 for a user to score "
                "from the history alone"
            )
        if user_bucket_ids.shape != (batch_size,):
            raise ValueError(f"user_bucket_ids must have shape ({batch_size},), got {tuple(user_bucket_ids.shape)}")
        if not _is_exporting():  # a value check, as in `_check_token_ids`
            _check_buckets(user_bucket_ids, self.config.user_id_buckets, "user_bucket_ids")
        return _bucket_bias(self.user_id_bias, user_bucket_ids)

    @torch.no_grad()
    def fit_id_biases(
        self,
        labels: torch.Tensor,
        ad_bucket_ids: torch.LongTensor | None = None,
        user_bucket_ids: torch.LongTensor | None = None,
        l2: float = 1.0,
        max_rounds: int = 100,
        tolerance: float = 1e-6,
    ) -> None:
        """Set `bias` and the id biases this model has (`config.ad_id_bias`, `config.user_id_buckets`) to an
        L2-regularised logistic regression of the clicks on ad and user identity alone (a popularity model), so that
        fine-tuning starts from it and the user/ad dot product has only to learn what identity does not say. Block
        Newton steps (the intercept, then each group), each bucket's step bounded so that skewed click rates cannot
        make it oscillate, until no step exceeds `tolerance`. Buckets of -1 are left out of their group; buckets
        with no impression keep their bias.

        Args:
            labels (`torch.Tensor` of shape `(N,)`): 0/1 clicks of the training impressions.
            ad_bucket_ids (`torch.LongTensor` of shape `(N,)`, *optional*): each impression's ad title id bucket
                (needed with `config.ad_id_bias`).
            user_bucket_ids (`torch.LongTensor` of shape `(N,)`, *optional*): each impression's user id bucket
                (needed with `config.user_id_buckets`).
            l2 (`float`): the penalty on each id bias (`1 / C` of scikit-learn's LogisticRegression); the intercept
                is not penalised.
            max_rounds (`int`): at most this many rounds of steps.
            tolerance (`float`): stop when no bias moves by more than this in a round.
        """
        if not l2 > 0 or max_rounds < 1:
            raise ValueError(f"fit_id_biases needs l2 > 0 and max_rounds >= 1; got l2={l2}, max_rounds={max_rounds}")
        # On CPU in float64 whatever the model's device and dtype: the same result everywhere, then copied over.
        labels = labels.detach().to("cpu", torch.float64).view(-1)
        groups = []
        for name, biases, buckets in (
            ("ad_bucket_ids", self.ad_id_bias, ad_bucket_ids),
            ("user_bucket_ids", self.user_id_bias, user_bucket_ids),
        ):
            if biases is None:
                continue
            if buckets is None or buckets.shape != labels.shape:
                raise ValueError(f"fit_id_biases needs {name} of shape {tuple(labels.shape)} for this model's id bias")
            _check_buckets(buckets, biases.numel(), name)
            buckets = buckets.detach().to("cpu", torch.long)
            groups.append((biases, buckets[buckets >= 0], (buckets >= 0).nonzero().squeeze(-1)))
        if not labels.numel() or bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("fit_id_biases needs at least one impression and labels of 0 or 1")
        intercept = torch.zeros((), dtype=torch.float64)
        values = [torch.zeros(biases.numel(), dtype=torch.float64) for biases, *_ in groups]
        logits = torch.zeros_like(labels)  # kept up to date with every step
        for _ in range(max_rounds):
            p = torch.sigmoid(logits)
            step = ((labels - p).sum() / (p * (1 - p)).sum().clamp(min=1e-12)).clamp(-2, 2)  # 2: a 7x odds ratio
            intercept += step
            logits += step
            largest = step.abs()
            for value, (_, buckets, rows) in zip(values, groups):
                p = torch.sigmoid(logits[rows])
                gradient = torch.zeros_like(value).index_add_(0, buckets, labels[rows] - p) - l2 * value
                curvature = torch.zeros_like(value).index_add_(0, buckets, p * (1 - p)) + l2
                step = (gradient / curvature).clamp(-2, 2)
                value += step
                logits[rows] += step[buckets]
                largest = torch.maximum(largest, step.abs().max())
            if largest <= tolerance:
                break
        self.bias.copy_(intercept)
        for value, (biases, buckets, _) in zip(values, groups):
            seen = torch.unique(buckets)
            biases[seen.to(biases.device)] = value[seen].to(biases.device, biases.dtype)

    @torch.no_grad()
    def id_bias_logits(
        self, ad_bucket_ids: torch.LongTensor | None = None, user_bucket_ids: torch.LongTensor | None = None
    ) -> torch.Tensor:
        """(N,) the logits of identity alone, as `fit_id_biases` fits them: `bias` plus each impression's ad and user
        id bias (0 for a bucket of -1), on CPU in float32; scores that popularity model on held-out impressions.

        Args:
            ad_bucket_ids (`torch.LongTensor` of shape `(N,)`, *optional*): needed with `config.ad_id_bias`.
            user_bucket_ids (`torch.LongTensor` of shape `(N,)`, *optional*): needed with `config.user_id_buckets`.
        """
        logits = None
        for name, biases, buckets in (
            ("ad_bucket_ids", self.ad_id_bias, ad_bucket_ids),
            ("user_bucket_ids", self.user_id_bias, user_bucket_ids),
        ):
            if biases is None:
                continue
            if buckets is None:
                raise ValueError(f"id_bias_logits needs {name} for this model's id bias")
            buckets = buckets.detach().to("cpu", torch.long).view(-1)
            _check_buckets(buckets, biases.numel(), name)
            part = _bucket_bias(biases.detach().to("cpu", torch.float32), buckets)
            if logits is not None and part.shape != logits.shape:
                raise ValueError("ad_bucket_ids and user_bucket_ids must have the same length")
            logits = part if logits is None else logits + part
        if logits is None:
            raise ValueError("id_bias_logits needs a model with id biases (config.ad_id_bias or user_id_buckets)")
        return logits + self.bias.detach().to("cpu", torch.float32)

    def forward(
        self,
        behavior_input_ids: torch.LongTensor | None = None,
        behavior_attention_mask: torch.LongTensor | None = None,
        history_indices: torch.LongTensor | None = None,
        history_time_gaps: torch.Tensor | None = None,
        ad_title_indices: torch.LongTensor | None = None,
        ad_description_indices: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        behavior_embeddings: torch.FloatTensor | None = None,
        behavior_bucket_ids: torch.LongTensor | None = None,
        user_bucket_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PTUMCTROutput | tuple:
        r"""
        Args:
            ad_title_indices (`torch.LongTensor` of shape `(batch_size,)`): the ad title's row in the behavior table.
            ad_description_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*): the description's row,
                -1 when the ad has none.
            user_bucket_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*): each user's id bucket, needed
                with `config.user_id_buckets`; -1 scores a user as new (no user bias).
            labels (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): 1 for a click, 0 otherwise.
            return_dict (`bool`, *optional*): `False` returns `output.to_tuple()` (see `PTUMModel.forward`).
        """
        self._check_forward_kwargs(kwargs)
        if ad_title_indices is None:
            raise ValueError("ad_title_indices is required: (batch_size,) rows of the behavior table")
        frozen = self.config.freeze_user_model
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if behavior_embeddings is None:
                behavior_embeddings = self.ptum.encode_behaviors(
                    behavior_input_ids, behavior_attention_mask, bucket_ids=behavior_bucket_ids
                )
            _check_indices(ad_title_indices, behavior_embeddings.shape[0], "ad_title_indices")
            user = self.ptum(
                history_indices=history_indices,
                history_time_gaps=history_time_gaps,
                behavior_embeddings=behavior_embeddings,
                return_dict=True,
            ).user_embeddings
        if ad_description_indices is not None:
            _check_indices(ad_description_indices, behavior_embeddings.shape[0], "ad_description_indices")
        ad_table = None
        if self.ad_encoder is not None:
            if behavior_input_ids is None:
                raise ValueError("share_ad_encoder=False needs behavior_input_ids (the ad encoder reads the texts)")
            ad_table = self.ptum.encode_behaviors(
                behavior_input_ids, behavior_attention_mask, encoder=self.ad_encoder, bucket_ids=behavior_bucket_ids
            )
        ad = self.encode_ads(behavior_embeddings, ad_title_indices, ad_description_indices, ad_table)
        logits = (user * ad).sum(-1) + self.bias
        if self.ad_prior is not None:
            logits = logits + self.ad_prior(ad).squeeze(-1)
        if self.ad_id_bias is not None:
            logits = logits + self.ad_bias(behavior_bucket_ids, ad_title_indices)
        if self.user_id_bias is not None:
            logits = logits + self.user_bias(user_bucket_ids, logits.shape[0])
        loss = None
        if labels is not None:
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float().view(-1))
        output = PTUMCTROutput(loss=loss, logits=logits, user_embeddings=user, ad_embeddings=ad)
        return output if self._return_dict(return_dict) else output.to_tuple()


__all__ = [
    "PAD_INDEX",
    "MASK_INDEX",
    "IGNORE_INDEX",
    "build_behavior_table",
    "PTUMPreTrainedModel",
    "PTUMModel",
    "PTUMForPretraining",
    "PTUMForDemographicClassification",
    "PTUMForCTR",
    "PTUMModelOutput",
    "PTUMForPretrainingOutput",
    "PTUMClassifierOutput",
    "PTUMCTROutput",
]
