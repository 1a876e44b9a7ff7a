"""ONNX export of a PTUM checkpoint for serving: one graph per use, with the tokenizer and config beside them.

    ptum-hf export outputs/pretrain/model --output outputs/onnx

The folder written holds `user_encoder.onnx` (a batch -> `user_embeddings`) and, for a fine-tuned checkpoint, the
head's graph (`demographics.onnx` -> `logits`, `ctr.onnx` -> click `logits`), plus `config.json`, the tokenizer and
`export.json` (each graph's inputs and outputs). Inputs are the batch tensors of the collators in `ptum_hf.data`
(`behavior_input_ids`, `behavior_attention_mask`, `history_indices`, `history_time_gaps`, `behavior_bucket_ids`
with `config.behavior_id_buckets`, CTR's ad rows and `user_bucket_ids` with `config.user_id_buckets`); every size is
dynamic: batch, unique behaviors M, tokens per behavior L (up to `config.max_tokens_per_behavior`) and history length
N.

The graphs are traced with `torch.export` (the models take their shape-only paths then; see
`modeling_ptum._is_exporting`) and converted by `torch.onnx.export(dynamo=True)`. They check no input values: the
collators (or the server) must give token ids below `vocab_size` and rows of the behavior table (-1 for padding).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_directory
from .locking import output_lock
from .modeling_ptum import (
    PAD_INDEX,
    PTUMForCTR,
    PTUMForDemographicClassification,
    PTUMModel,
    PTUMPreTrainedModel,
)

EXPORT_FORMATS = ("onnx",)
EXPORT_MANIFEST = "export.json"
USER_INPUTS = ("behavior_input_ids", "behavior_attention_mask", "history_indices", "history_time_gaps")
AD_INPUTS = ("ad_title_indices", "ad_description_indices")
# Each graph: file, the head class it needs (None: every checkpoint has the user encoder), the output field.
GRAPHS = {
    "user_encoder": ("user_encoder.onnx", None, "user_embeddings"),
    "demographics": ("demographics.onnx", PTUMForDemographicClassification, "logits"),
    "ctr": ("ctr.onnx", PTUMForCTR, "logits"),
}
# Files of the checkpoint copied beside the graphs besides the config and tokenizer: the config's code, so that
# `AutoConfig.from_pretrained(folder, trust_remote_code=True)` reads it where ptum_hf is not installed.
_CODE_FILES = ("configuration_ptum.py",)


class ServingGraph(nn.Module):
    """A PTUM model as one graph for serving: the named batch tensors in, one output field out."""

    def __init__(self, model: PTUMPreTrainedModel, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(
        self,
        behavior_input_ids: torch.Tensor,
        behavior_attention_mask: torch.Tensor,
        history_indices: torch.Tensor,
        history_time_gaps: torch.Tensor,
        behavior_bucket_ids: torch.Tensor | None = None,
        ad_title_indices: torch.Tensor | None = None,
        ad_description_indices: torch.Tensor | None = None,
        user_bucket_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = dict(
            behavior_input_ids=behavior_input_ids,
            behavior_attention_mask=behavior_attention_mask,
            history_indices=history_indices,
            history_time_gaps=history_time_gaps,
            behavior_bucket_ids=behavior_bucket_ids,
            ad_title_indices=ad_title_indices,
            ad_description_indices=ad_description_indices,
            user_bucket_ids=user_bucket_ids,
        )
        batch = {name: value for name, value in batch.items() if value is not None}
        return getattr(self.model(**batch, return_dict=True), self.output)


def graph_inputs(config, graph: str) -> list[str]:
    """The input names of a graph, in order."""
    names = list(USER_INPUTS)
    if config.behavior_id_buckets:
        names.append("behavior_bucket_ids")
    if graph == "ctr":
        names += AD_INPUTS
        if config.user_id_buckets:
            names.append("user_bucket_ids")
    return names


def example_batch(config, graph: str, batch: int = 3, history: int = 4, behaviors: int = 5, tokens: int = 4, seed=0):
    """A random batch in the collators' layout (padding included), for tracing and for checking a graph."""
    g = torch.Generator().manual_seed(seed)
    tokens = min(tokens, config.max_tokens_per_behavior)
    lengths = torch.randint(1, tokens + 1, (behaviors,), generator=g)
    mask = (torch.arange(tokens)[None] < lengths[:, None]).long()
    ids = torch.randint(0, config.vocab_size, (behaviors, tokens), generator=g)
    ids = torch.where(mask.bool(), ids, config.pad_token_id)
    rows = torch.randint(0, behaviors, (batch, history), generator=g)
    kept = torch.randint(1, history + 1, (batch,), generator=g)
    kept[0] = history  # one full history, the others right-padded
    valid = torch.arange(history)[None] < kept[:, None]
    inputs = {
        "behavior_input_ids": ids,
        "behavior_attention_mask": mask,
        "history_indices": torch.where(valid, rows, PAD_INDEX),
        "history_time_gaps": torch.where(valid, torch.rand(batch, history, generator=g) * 1e6, 0.0),
    }
    if config.behavior_id_buckets:
        buckets = torch.randint(-1, config.behavior_id_buckets, (behaviors,), generator=g)
        inputs["behavior_bucket_ids"] = buckets
    if graph == "ctr":
        inputs["ad_title_indices"] = torch.randint(0, behaviors, (batch,), generator=g)
        described = torch.rand(batch, generator=g) < 0.5
        inputs["ad_description_indices"] = torch.where(
            described, torch.randint(0, behaviors, (batch,), generator=g), PAD_INDEX
        )
        if config.user_id_buckets:
            inputs["user_bucket_ids"] = torch.randint(-1, config.user_id_buckets, (batch,), generator=g)
    return {name: inputs[name] for name in graph_inputs(config, graph)}


def dynamic_shapes(config, graph: str) -> dict:
    """Every size of a batch is dynamic; L is bounded by what the model reads (`max_tokens_per_behavior`)."""
    dim = torch.export.Dim
    behaviors, batch, history = dim("behaviors", min=1), dim("batch", min=1), dim("history", min=1)
    tokens = dim("tokens", min=1, max=config.max_tokens_per_behavior) if config.max_tokens_per_behavior > 1 else None
    shapes = {
        "behavior_input_ids": {0: behaviors, 1: tokens},
        "behavior_attention_mask": {0: behaviors, 1: tokens},
        "history_indices": {0: batch, 1: history},
        "history_time_gaps": {0: batch, 1: history},
        "behavior_bucket_ids": {0: behaviors},
        "ad_title_indices": {0: batch},
        "ad_description_indices": {0: batch},
        "user_bucket_ids": {0: batch},
    }
    return {name: shapes[name] for name in graph_inputs(config, graph)}


# Options whose export is refused, and why: torch's LSTM decomposition fixes the history length of a one-directional
# LSTM over a (batch, history) input to the example's (the behavior encoder's bidirectional LSTM exports).
UNEXPORTABLE = {
    ("user_encoder_type", "lstm"): "torch.export fixes its sequence length to the example's (use 'gru' to serve)",
}


def check_exportable(config):
    """Raise `ValueError` naming the first option of `config` that cannot give a graph for every batch size."""
    for (option, value), why in UNEXPORTABLE.items():
        if getattr(config, option) == value:
            raise ValueError(f"{option}={value!r} cannot be exported to ONNX with dynamic shapes: {why}")


def export_graph(model: PTUMPreTrainedModel, graph: str, path) -> None:
    """Write one graph of `model` (the head for `demographics` / `ctr`) as ONNX to `path`; every size dynamic."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's converter)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'ptum-hf[onnx]'") from None
    config = model.config
    check_exportable(config)
    output = GRAPHS[graph][2]
    shapes = dynamic_shapes(config, graph)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        try:
            program = torch.onnx.export(
                ServingGraph(model, output).eval(),
                (),
                kwargs=example_batch(config, graph),
                dynamic_shapes=shapes,
                output_names=[output],
                dynamo=True,
                verbose=False,
            )
        except Exception as error:
            raise RuntimeError(f"could not export the {graph} graph ({_options(config)}): {error}") from error
    # The exporter fixes a size it could not keep dynamic to the example's (a warning at most): refuse such a graph.
    for value in program.model.graph.inputs:
        fixed = [
            axis for axis, dim in shapes[value.name].items() if dim is not None and isinstance(value.shape[axis], int)
        ]
        if fixed:
            raise RuntimeError(
                f"the {graph} graph of this model ({_options(config)}) fixes axis {fixed[0]} of {value.name} to the "
                "example batch's size: it would not serve other batches"
            )
    program.save(str(path))  # weights inside the file, or beside it past ONNX's 2 GiB


def _options(config) -> str:
    return f"behavior_encoder_type={config.behavior_encoder_type!r}, user_encoder_type={config.user_encoder_type!r}"


def load_for_export(model_dir) -> PTUMPreTrainedModel:
    """The checkpoint's model (its head class, from `config.architectures`), in float32 eval mode."""
    from . import modeling_ptum
    from .configuration_ptum import PTUMConfig

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder: give the folder of a saved PTUM model")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json: it is not a saved PTUM model (save_pretrained writes config.json, "
            "the weights and, with ptum-hf's commands, the tokenizer)"
        )
    config = PTUMConfig.from_pretrained(folder)
    architecture = (config.architectures or ["PTUMModel"])[0]
    model_class = getattr(modeling_ptum, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, PTUMPreTrainedModel)):
        model_class = PTUMModel
    return model_class.from_pretrained(folder, config=config).float().eval()


def _load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise OSError(
            f"{str(model_dir)!r} has no tokenizer that loads ({error}); the exported folder must serve alone, so "
            "export a checkpoint saved with its tokenizer (as ptum-hf pretrain and finetune save them)"
        ) from error


def onnx_session(path, threads: int | None = None):
    """An ONNX Runtime session of one exported graph (CPU; `threads` for its operators, default ONNX Runtime's)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running an exported graph needs onnxruntime: pip install 'ptum-hf[onnx]'") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, batch: dict) -> np.ndarray:
    """Run a graph on a batch of the collators' layout (tensors or arrays); keys the graph does not take are left."""
    names = [value.name for value in session.get_inputs()]
    return session.run(None, {name: np.asarray(batch[name]) for name in names})[0]


def check_graph(model: PTUMPreTrainedModel, graph: str, path, atol: float = 1e-4):
    """Compare an exported graph with PyTorch on a batch of other sizes than the export's example; raise
    `RuntimeError` when they differ by more than `atol` (relative to the outputs' scale)."""
    sizes = dict(batch=5, history=7, behaviors=9, tokens=model.config.max_tokens_per_behavior, seed=1)
    batch = example_batch(model.config, graph, **sizes)
    with torch.no_grad():
        expected = ServingGraph(model, GRAPHS[graph][2]).eval()(**batch).float().numpy()
    got = run_onnx(onnx_session(path), batch)
    error = float(np.abs(got - expected).max())
    if got.shape != expected.shape or error > atol * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(
            f"the exported {graph} graph ({_options(model.config)}) does not match PyTorch: shape {got.shape} vs "
            f"{expected.shape}, largest difference {error:.3g}"
        )
    return error


def export_onnx(model_dir, output, check: bool = True) -> Path:
    """Write the ONNX graphs of the checkpoint `model_dir` (see the module's docstring) into the folder `output`,
    under a temporary name, then renamed into place (a previous export there is replaced as a whole). With `check`
    (and onnxruntime installed), each graph is first compared with PyTorch on a batch (`check_graph`)."""
    output = Path(output)
    source, target = Path(model_dir).resolve(), output.resolve()
    if target == source or target in source.parents:  # the output folder is replaced as a whole
        raise ValueError(f"the output folder {str(output)!r} holds the model {str(model_dir)!r}: choose another one")
    model = load_for_export(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    check_exportable(model.config)
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            check = False
    graphs = {"user_encoder": model if isinstance(model, PTUMModel) else model.ptum}
    for graph, (_, head_class, _) in GRAPHS.items():
        if head_class is not None and isinstance(model, head_class):
            graphs[graph] = model
    manifest = {"format": "onnx", "torch": torch.__version__, "graphs": {}}
    with output_lock(output, "--output", file=True), atomic_directory(output) as tmp:
        for graph, graph_model in graphs.items():
            file, _, output_name = GRAPHS[graph]
            export_graph(graph_model, graph, tmp / file)
            entry = {"file": file, "inputs": graph_inputs(model.config, graph), "outputs": [output_name]}
            if check:
                entry["max_abs_difference_vs_pytorch"] = check_graph(graph_model, graph, tmp / file)
            manifest["graphs"][graph] = entry
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in _CODE_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return output
