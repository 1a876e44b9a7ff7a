"""`transformers` pipelines for PTUM user models: raw behavior events in, one result per user out.

    pipe = pipeline("user-feature-extraction", model="outputs/pretrain/model", trust_remote_code=True)
    pipe(events)  # [{"user_id": "u1", "embedding": [...]}, ...]
    pipe = pipeline("user-classification", model="outputs/finetune/model", trust_remote_code=True)
    pipe(events)  # [{"user_id": "u1", "age": {"label": "25-34", "score": 0.61}, ...}, ...]

`events` is what `model.encode` takes (`processing_ptum`): event dicts, a DataFrame, a `datasets.Dataset` or a log
path; the whole input is one set of users (a list of events is not a list of inputs). A checkpoint saved with its code
names these pipelines in its `config.json` (`custom_pipelines`, also `feature-extraction`, which for a PTUM model
reads events, not text), and this file ships beside it; `import ptum_hf` registers the two tasks for models given as
objects.
"""

from transformers.pipelines.base import ChunkPipeline

from .processing_ptum import class_names, iter_user_batches, load_tokenizer_of, read_user_events

DEFAULT_BATCH_SIZE = 64  # users per forward pass

# `config.json`'s `custom_pipelines` (written by `PTUMPreTrainedModel.save_pretrained` when it ships the code).
REMOTE_PIPELINES = {
    "user-feature-extraction": {"impl": "pipeline_ptum.PTUMUserFeatureExtractionPipeline", "pt": ["AutoModel"]},
    "feature-extraction": {"impl": "pipeline_ptum.PTUMUserFeatureExtractionPipeline", "pt": ["AutoModel"]},
    "user-classification": {
        "impl": "pipeline_ptum.PTUMUserClassificationPipeline",
        "pt": ["AutoModelForSequenceClassification"],
    },
}


class _PTUMUserPipeline(ChunkPipeline):
    """Raw events -> batches of users (`preprocess`) -> model outputs (`_forward`) -> one result per user."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer_of(self.model)
        self.model.eval()

    def __call__(self, users, batch_size: int | None = None, **kwargs):
        """`users`: raw events (a list of event dicts, a DataFrame, a `datasets.Dataset` or a log path), taken as
        one input. Returns a list with one result per user, in order of first appearance."""
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        preprocess["batch_size"] = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
        forward = {**self._forward_params, **forward}
        postprocess = {**self._postprocess_params, **postprocess}
        return self.run_single(users, preprocess, forward, postprocess)

    def preprocess(self, users, batch_size: int = DEFAULT_BATCH_SIZE):
        events = read_user_events(users)
        for user_ids, inputs in iter_user_batches(events, self.tokenizer, self.model.config, batch_size):
            yield {"user_ids": user_ids, **inputs}

    def _forward(self, model_inputs):
        user_ids = model_inputs.pop("user_ids")
        return {"user_ids": user_ids, **self._outputs(model_inputs)}


class PTUMUserFeatureExtractionPipeline(_PTUMUserPipeline):
    """Task `user-feature-extraction`: `[{"user_id": ..., "embedding": list of floats}]` (a tensor with
    `return_tensors=True`), the vectors `model.encode` gives."""

    def _sanitize_parameters(self, return_tensors=None, **kwargs):
        _refuse_unknown(kwargs)
        return {}, {}, {} if return_tensors is None else {"return_tensors": return_tensors}

    def _outputs(self, model_inputs):
        return {"embeddings": self.model.base_model(**model_inputs, return_dict=True).user_embeddings.float()}

    def postprocess(self, all_outputs, return_tensors: bool = False):
        results = []
        for batch in all_outputs:
            for user_id, vector in zip(batch["user_ids"], batch["embeddings"]):
                results.append({"user_id": user_id, "embedding": vector if return_tensors else vector.tolist()})
        return results


class PTUMUserClassificationPipeline(_PTUMUserPipeline):
    """Task `user-classification`: per user, for each label head, `{"label": class name, "score": probability}` of
    the most probable class, or the `top_k` most probable as a list (`top_k=None`: every class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        architectures = getattr(self.model.config, "architectures", None) or []
        if not hasattr(self.model, "split_logits") or (
            architectures and "PTUMForDemographicClassification" not in architectures
        ):
            raise ValueError(
                f"user-classification needs a fine-tuned PTUMForDemographicClassification checkpoint; this one is "
                f"{architectures or type(self.model).__name__} (its head would be untrained). Fine-tune it first "
                "(ptum-hf finetune demographics), or use the task 'user-feature-extraction' for user embeddings"
            )

    def _sanitize_parameters(self, top_k="", **kwargs):
        _refuse_unknown(kwargs)
        if top_k == "":
            return {}, {}, {}
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None (every class), got {top_k!r}")
        return {}, {}, {"top_k": top_k}

    def _outputs(self, model_inputs):
        return {"logits": self.model(**model_inputs, return_dict=True).logits.float()}

    def postprocess(self, all_outputs, top_k: int | None = 1):
        names = class_names(self.model.config)
        results = []
        for batch in all_outputs:
            heads = {head: logits.softmax(-1) for head, logits in self.model.split_logits(batch["logits"]).items()}
            for row, user_id in enumerate(batch["user_ids"]):
                result = {"user_id": user_id}
                for head, probabilities in heads.items():
                    scores = probabilities[row].tolist()
                    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k]
                    best = [{"label": names[head][i], "score": scores[i]} for i in ranked]
                    result[head] = best[0] if top_k == 1 else best
                results.append(result)
        return results


def _refuse_unknown(kwargs: dict):
    if kwargs:
        raise TypeError(f"unknown pipeline argument(s): {', '.join(sorted(kwargs))}")


def register_pipelines():
    """Register the PTUM tasks with `transformers.pipeline` in this process (`import ptum_hf` does)."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    for task, pipeline_class, model_class in (
        ("user-feature-extraction", PTUMUserFeatureExtractionPipeline, AutoModel),
        ("user-classification", PTUMUserClassificationPipeline, AutoModelForSequenceClassification),
    ):
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=model_class)


__all__ = [
    "PTUMUserClassificationPipeline",
    "PTUMUserFeatureExtractionPipeline",
    "REMOTE_PIPELINES",
    "register_pipelines",
]
