"""Save PTUM checkpoints in the layout the Hugging Face Hub expects, and publish them.

A published folder holds the weights (safetensors only), `config.json` with an `auto_map`, the modeling and
configuration source files (so `AutoModel.from_pretrained(..., trust_remote_code=True)` works without `ptum_hf`),
the tokenizer files when given, a `README.md` model card, and `checksums.json`: the sha256 of each weights file, which
the PTUM classes' `from_pretrained` verifies when it loads the folder (transformers itself never reads it).
"""

import contextlib
import dataclasses
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from .atomic import atomic_directory
from .data.tokenization import write_portable_tokenizer_class
from .modelcard import PTUMModelCardData, create_model_card
from .modeling_ptum import write_checksums

# Formats that unpickle (run code) when loaded; a published PTUM checkpoint never contains them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def save_for_hub(model, folder, tokenizer=None, card=None, overwrite: bool = True) -> Path:
    """
    Write what `push_to_hub` would upload into `folder`, atomically.

    Everything is written into a temporary folder beside `folder`, then renamed into place, so an interrupted save
    never leaves a half-written checkpoint: `folder` is either the old one or the complete new one. An existing
    `folder` is replaced as a whole (stale files from an earlier save do not survive) unless `overwrite=False`, which
    raises `FileExistsError` instead.

    Args:
        model: a PTUM model (any `PTUMPreTrainedModel`).
        folder: the checkpoint folder to create.
        tokenizer (*optional*): saved beside the model with its `save_pretrained`.
        card (*optional*): a `PTUMModelCardData`, a `huggingface_hub.ModelCard`, or markdown text. By default a card
            is made from the model's config (and says that no metrics were recorded).

    Returns:
        The checkpoint folder, as a `Path`.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
    with atomic_directory(folder) as staging:
        write_checkpoint(model, staging, tokenizer=tokenizer, card=card)
    return folder


def push_to_hub(
    model,
    repo_id: str,
    tokenizer=None,
    card=None,
    private: bool = False,
    commit_message: str = "Upload PTUM model",
    api: HfApi | None = None,
    token: str | None = None,
):
    """
    Publish a PTUM model (with its tokenizer and model card) to the Hugging Face Hub in one commit.

    The files are first written into a temporary folder (as `save_for_hub` writes them), then the repository is
    created if needed and the folder uploaded.

    Args:
        model: a PTUM model.
        repo_id (`str`): `"org/name"` (or `"name"` for your own namespace).
        tokenizer (*optional*): uploaded beside the model.
        card (*optional*): a `PTUMModelCardData` (its `model_id` defaults to `repo_id`), a `ModelCard`, or markdown.
        private (`bool`, *optional*, defaults to `False`): visibility when the repository is created.
        commit_message (`str`, *optional*): the commit's message.
        api (`huggingface_hub.HfApi`, *optional*): the client to use; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token, when `api` is not given; else the logged-in user's.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (its `commit_url` links to the commit).
    """
    api = api if api is not None else HfApi(token=token)
    card = _with_model_id(card, repo_id)
    with tempfile.TemporaryDirectory(prefix="ptum-push-") as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        # Written before touching the Hub: a model that fails to save creates no empty repository.
        write_checkpoint(model, folder, tokenizer=tokenizer, card=card)
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private)
        return api.upload_folder(
            repo_id=getattr(repo_url, "repo_id", repo_id),
            folder_path=folder,
            commit_message=commit_message,
            repo_type="model",
        )


def write_checkpoint(model, folder, tokenizer=None, card=None) -> list[str]:
    """
    Write the model (with its source files and `auto_map`), the tokenizer, `README.md` and `checksums.json` (the
    sha256 of each weights file) into an existing folder. Returns the sorted relative paths of the files written.
    Prefer `save_for_hub`, which is atomic.
    """
    folder = Path(folder)
    with remote_code_registered(model):
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        if (folder / "tokenizer_config.json").is_file():
            write_portable_tokenizer_class(folder / "tokenizer_config.json")  # whatever class the tokenizer is
    _as_model_card(card, model).save(folder / "README.md")
    write_checksums(folder)  # last: it hashes the weights as they are on disk

    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    pickled = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise RuntimeError(f"refusing to publish pickle-based files {pickled}: PTUM checkpoints are safetensors only")
    return files


@contextlib.contextmanager
def remote_code_registered(model):
    """
    Within the block, `save_pretrained` copies the modeling and configuration files beside the weights and writes
    `auto_map` into `config.json`.

    PTUM models map every Auto class themselves (`register_for_auto_classes`); another model falls back to
    transformers' `register_for_auto_class`. Registration sets class-level state (`_auto_class`) and the config's
    `auto_map`; both are restored afterwards, so later plain saves of the same class behave as before.
    """
    classes = (type(model), type(model.config))
    saved = [cls.__dict__.get("_auto_class", _MISSING) for cls in classes]
    saved_auto_map = model.config.__dict__.get("auto_map", _MISSING)
    try:
        if hasattr(model, "register_for_auto_classes"):
            model.register_for_auto_classes()
        else:
            model.config.register_for_auto_class()
            model.register_for_auto_class("AutoModel")
        yield
    finally:
        for cls, value in zip(classes, saved):
            if value is _MISSING:
                if "_auto_class" in cls.__dict__:
                    delattr(cls, "_auto_class")
            else:
                cls._auto_class = value
        model.__dict__.pop("_ships_code", None)
        if saved_auto_map is _MISSING:
            model.config.__dict__.pop("auto_map", None)
        else:
            model.config.auto_map = saved_auto_map


_MISSING = object()


def _as_model_card(card, model) -> ModelCard:
    if card is None or isinstance(card, PTUMModelCardData):
        return create_model_card(card, model=model)
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, str):
        return ModelCard(card)
    raise TypeError(f"card must be a PTUMModelCardData, a ModelCard or markdown text, got {type(card).__name__}")


def _with_model_id(card, repo_id: str):
    """The card data with `model_id` set to the repository, without changing the caller's object."""
    if card is None:
        return PTUMModelCardData(model_id=repo_id)
    if isinstance(card, PTUMModelCardData) and not card.model_id:
        return dataclasses.replace(card, model_id=repo_id)
    return card


__all__ = ["push_to_hub", "remote_code_registered", "save_for_hub", "write_checkpoint"]
