"""PTUM model configuration."""

import dataclasses
import functools
import math
import os

from transformers import PretrainedConfig

BEHAVIOR_ENCODER_TYPES = ("attention", "cnn", "lstm", "gru", "transformer", "pretrained")
USER_ENCODER_TYPES = ("transformer", "self_attention", "attention", "gru", "lstm")
PREDICTOR_TYPES = ("dot",)

# The paper's six user models. Each preset only overrides the encoders; every other field keeps the paper's default.
PRESETS = {
    # HAN (Hierarchical Attention Network): attentional bi-LSTM over words, additive attention over behaviors.
    "han": {"behavior_encoder_type": "lstm", "user_encoder_type": "attention"},
    # HURA: CNN + additive attention for texts, additive attention over behaviors (no sequence model).
    "hura": {"behavior_encoder_type": "cnn", "user_encoder_type": "attention"},
    # HSA (the paper's own encoder): self-attention + additive attention at both levels.
    "hsa": {"behavior_encoder_type": "attention", "user_encoder_type": "self_attention"},
    # GRU4Rec: a GRU over the behavior sequence; behaviors read by a GRU over words.
    "gru4rec": {"behavior_encoder_type": "gru", "user_encoder_type": "gru"},
    # NativeCTR: CNN + attention texts, attention pooling of the user's behaviors.
    "nativectr": {"behavior_encoder_type": "cnn", "user_encoder_type": "attention"},
    # BERT4Rec: stacked bidirectional transformer layers over the behavior sequence.
    "bert4rec": {
        "behavior_encoder_type": "transformer",
        "user_encoder_type": "transformer",
        "user_num_layers": 2,
    },
}

# Model sizes, independent of the preset (which only picks the encoders). "paper" is the paper's (300-d words, 256-d
# vectors, 100 behaviors of 30 tokens), slow on a CPU; "small" is what the experiments use; "tiny" is for smoke runs
# and tests. `PTUMConfig.from_preset(name, size=...)` applies one; explicit fields override it.
SIZE_PRESETS = {
    "paper": {},
    "small": {
        "word_embedding_dim": 64,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "additive_attention_dim": 32,
        "intermediate_size": 128,
        "max_behaviors": 50,
        "max_tokens_per_behavior": 16,
    },
    "tiny": {
        "word_embedding_dim": 16,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "additive_attention_dim": 8,
        "intermediate_size": 32,
        "max_behaviors": 20,
        "max_tokens_per_behavior": 12,
    },
}

# Pre-training recipes, by the kind of behavior log (results/studies/bag_prediction.md). "paper" is Wu et al.'s:
# MBP + NBP on behavior texts, which pays where behaviors are mostly new texts (news, searches; the synthetic scale
# setting). "items" is for logs of a recurring catalogue (movies, products, ads), where on MovieLens it measured best:
# an id embedding beside the text, bag prediction over the whole history, additive-attention pooling, no dropout.
# Its user encoder wins over the preset's; explicit fields win over both.
RECIPES = {
    "paper": {},
    "items": {
        "use_bag": True,
        "use_mbp": False,
        "use_nbp": False,
        "behavior_id_buckets": 65536,
        "user_encoder_type": "attention",
        "dropout": 0.0,
        "max_behaviors": 200,
    },
}

# Upper bounds of the size fields. A config.json is input from whoever made the checkpoint: without a bound, one that
# asks for `hidden_size: 10000000` fails only when torch cannot allocate the weights (petabytes) or when transformers
# compares weight shapes, and neither message names the field; a size just small enough to fit takes the memory. The
# bounds sit far above any real PTUM model (the paper's: hidden 256, 30k words, 100 behaviors of 30 tokens), so they
# stop only absurd values, when the config is built, before anything is allocated. Each bounds one field alone, not
# their product: a config within every bound can still describe a model larger than your memory.
SIZE_LIMITS = {
    "vocab_size": 10_000_000,
    "word_embedding_dim": 65_536,
    "behavior_num_layers": 1_000,
    "cnn_kernel_size": 1_001,
    "max_tokens_per_behavior": 100_000,
    "hidden_size": 65_536,
    "num_attention_heads": 4_096,
    "additive_attention_dim": 65_536,
    "user_num_layers": 1_000,
    "intermediate_size": 262_144,
    "max_behaviors": 100_000,
    "num_time_buckets": 1_024,
    "num_negatives": 10_000,
    "num_next": 10_000,
}
MAX_ID_BUCKETS = 10_000_000  # rows of the behavior (or user) id embedding
MAX_LABEL_HEADS = 1_000  # demographic heads in `label_heads`
MAX_LABEL_CLASSES = 1_000_000  # classes of one head


class PTUMConfig(PretrainedConfig):
    r"""
    Configuration of a PTUM user model: a behavior (text) encoder, a user encoder over the behavior sequence, and the
    pre-training (MBP, NBP) and downstream (demographics, CTR) heads. Defaults are the paper's (Wu et al., 2020).

    Args:
        vocab_size (`int`, *optional*, defaults to 30000): size of the behavior-text vocabulary (tokenizer).
        pad_token_id (`int`, *optional*, defaults to 0): the tokenizer's padding id.
        word_embedding_dim (`int`, *optional*, defaults to 300): word embedding size.
        behavior_encoder_type (`str`, *optional*, defaults to `"attention"`): one of `attention` (the paper's
            self-attention + additive attention), `cnn`, `lstm`, `gru`, `transformer`, `pretrained`.
        behavior_num_layers (`int`, *optional*, defaults to 2): layers of the `transformer` behavior encoder.
        cnn_kernel_size (`int`, *optional*, defaults to 3): window of the `cnn` behavior encoder.
        text_encoder_config (`dict`, *optional*): config of a Hugging Face text encoder (`pretrained` type); its
            weights are stored inside the PTUM checkpoint. Use `PTUMModel.from_text_encoder` to start from one.
        freeze_text_encoder (`bool`, *optional*, defaults to `False`): keep the `pretrained` text encoder fixed.
        max_tokens_per_behavior (`int`, *optional*, defaults to 30): tokens kept per behavior.
        hidden_size (`int`, *optional*, defaults to 256): behavior and user vector size (16 heads x 16).
        num_attention_heads (`int`, *optional*, defaults to 16): heads of every self-attention layer.
        additive_attention_dim (`int`, *optional*, defaults to 200): query-layer size of additive attention pooling.
        user_encoder_type (`str`, *optional*, defaults to `"self_attention"`): `self_attention` (the paper's HSA:
            multi-head self-attention, then additive attention), `transformer` (adds output projection, feed-forward
            and LayerNorms; `user_num_layers` of them), `attention` (additive attention only), `gru`, `lstm`.
        user_num_layers (`int`, *optional*, defaults to 1): layers of the `transformer` user encoder.
        intermediate_size (`int`, *optional*, defaults to 512): feed-forward size of transformer layers.
        max_behaviors (`int`, *optional*, defaults to 100): most recent behaviors kept per user.
        num_time_buckets (`int`, *optional*, defaults to 32): log2 time-gap buckets.
        dropout (`float`, *optional*, defaults to 0.2): dropout everywhere.
        num_negatives (`int`, *optional*, defaults to 4): P, negatives per positive.
        num_next (`int`, *optional*, defaults to 2): K, next behaviors predicted by NBP.
        nbp_weight (`float`, *optional*, defaults to 1.0): lambda in loss = MBP + lambda * NBP.
        use_mbp / use_nbp (`bool`, *optional*, defaults to `True`): switch a pre-training task off (ablations).
        behavior_id_buckets (`int`, *optional*, defaults to 0): > 0 adds a learned id embedding to each behavior vector,
            indexed by a hash of the behavior's text modulo this many buckets (`behavior_bucket_ids`): what the text
            encoder must otherwise learn about a recurring item (a movie, a page) from its words. A behavior the
            embedding never saw in training still has its text; 0: text only.
        use_bag (`bool`, *optional*, defaults to `False`): a third pre-training task beyond the paper, bag prediction:
            from the user vector of the history with each behavior dropped with probability `bag_dropout`, predict
            every behavior of the history against all behaviors of the batch (one softmax over the batch's behavior
            table per target). Every position is a target at every step, where MBP has one.
        bag_weight (`float`, *optional*, defaults to 1.0): its weight in the loss.
        bag_dropout (`float`, *optional*, defaults to 0.5): share of the history hidden from the user encoder.
        predictor (`str`, *optional*, defaults to `"dot"`): how a candidate is scored against the user vector.
        label_heads (`dict[str, int]`, *optional*, defaults to `{"age": 4, "gender": 2}`): demographic heads and
            their class counts. `from_pretrained(..., num_labels=n)` sets the one head's count to n (refused with
            several heads, where it is ambiguous).
        label_names (`dict[str, list]`, *optional*): class names (strings or integers) of label heads, in class-id
            order: `label_names[head][i]` is class i of `head`. Set by fine-tuning from the labels it read. With one
            head, `id2label` / `label2id` follow it (or `LABEL_i` without names).
        freeze_user_model (`bool`, *optional*, defaults to `False`): train only the head ("no finetune").
        classifier_layer_norm (`bool`, *optional*, defaults to `False`): LayerNorm on the user vector before the
            demographic classifier. Pre-trained user vectors are small and share a large common component, which a
            plain linear head on a frozen user model learns only slowly.
        share_ad_encoder (`bool`, *optional*, defaults to `True`): CTR ads use the user side's behavior encoder.
        ad_prior (`bool`, *optional*, defaults to `False`): CTR adds a learned linear score of the ad vector to the
            click logit: a per-ad prior (how often an ad is clicked by anyone), which the user/ad dot product can
            only learn through a component shared by every user vector.
        ad_id_bias (`bool`, *optional*, defaults to `False`): CTR adds a learned bias per ad identity, indexed by the
            ad title's id bucket (needs `behavior_id_buckets` > 0): what an item's own click rate says, which its
            text may not. The biases start at 0 and only ads seen in training move theirs, so a new ad is scored
            from its text (and any bucket it shares by hashing).
        user_id_buckets (`int`, *optional*, defaults to 0): CTR adds a learned bias per user identity, in this many
            hashed buckets of the user id (0: none): a user's own click rate, which the behaviors may not carry (a
            log of what a user rated does not say how). The biases start at 0 and only users seen in training move
            theirs, so a new user is scored from the history alone (and any bucket it shares by hashing).
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal initialiser.

    Example:

    ```python
    >>> from ptum_hf import PTUMConfig, PTUMForPretraining
    >>> config = PTUMConfig.from_preset("hsa", vocab_size=5000)
    >>> model = PTUMForPretraining(config)
    ```
    """

    model_type = "ptum"

    def __init__(
        self,
        vocab_size: int = 30000,
        pad_token_id: int = 0,
        word_embedding_dim: int = 300,
        behavior_encoder_type: str = "attention",
        behavior_num_layers: int = 2,
        cnn_kernel_size: int = 3,
        text_encoder_config: dict | None = None,
        freeze_text_encoder: bool = False,
        max_tokens_per_behavior: int = 30,
        hidden_size: int = 256,
        num_attention_heads: int = 16,
        additive_attention_dim: int = 200,
        user_encoder_type: str = "self_attention",
        user_num_layers: int = 1,
        intermediate_size: int = 512,
        max_behaviors: int = 100,
        num_time_buckets: int = 32,
        dropout: float = 0.2,
        num_negatives: int = 4,
        num_next: int = 2,
        nbp_weight: float = 1.0,
        use_mbp: bool = True,
        use_nbp: bool = True,
        behavior_id_buckets: int = 0,
        use_bag: bool = False,
        bag_weight: float = 1.0,
        bag_dropout: float = 0.5,
        predictor: str = "dot",
        label_heads: dict | None = None,
        label_names: dict | None = None,
        freeze_user_model: bool = False,
        classifier_layer_norm: bool = False,
        share_ad_encoder: bool = True,
        ad_prior: bool = False,
        ad_id_bias: bool = False,
        user_id_buckets: int = 0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        # A config.json from a stranger is input: refuse keys that neither PTUM nor transformers defines (typos,
        # fields of another model, or attributes that would steer transformers' loader such as `transformers_weights`).
        _check_unknown_keys(kwargs)
        if "model_type" in kwargs and kwargs["model_type"] != self.model_type:  # e.g. from_dict(<a BERT config>)
            raise ValueError(_model_type_refusal("the config", kwargs["model_type"]))
        self.vocab_size = vocab_size
        self.word_embedding_dim = word_embedding_dim
        self.behavior_encoder_type = behavior_encoder_type
        self.behavior_num_layers = behavior_num_layers
        self.cnn_kernel_size = cnn_kernel_size
        self.text_encoder_config = text_encoder_config
        self.freeze_text_encoder = freeze_text_encoder
        self.max_tokens_per_behavior = max_tokens_per_behavior
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.additive_attention_dim = additive_attention_dim
        self.user_encoder_type = user_encoder_type
        self.user_num_layers = user_num_layers
        self.intermediate_size = intermediate_size
        self.max_behaviors = max_behaviors
        self.num_time_buckets = num_time_buckets
        self.dropout = dropout
        self.num_negatives = num_negatives
        self.num_next = num_next
        self.nbp_weight = nbp_weight
        self.use_mbp = use_mbp
        self.use_nbp = use_nbp
        self.behavior_id_buckets = behavior_id_buckets
        self.use_bag = use_bag
        self.bag_weight = bag_weight
        self.bag_dropout = bag_dropout
        self.predictor = predictor
        self.label_heads = dict(label_heads) if label_heads is not None else {"age": 4, "gender": 2}
        self.label_names = {} if label_names is None else label_names
        num_labels = kwargs.pop("num_labels", None)  # transformers' name for the class count of a classifier
        if num_labels is not None:
            self._set_num_labels(num_labels)
        self.freeze_user_model = freeze_user_model
        self.classifier_layer_norm = classifier_layer_norm
        self.share_ad_encoder = share_ad_encoder
        self.ad_prior = ad_prior
        self.ad_id_bias = ad_id_bias
        self.user_id_buckets = user_id_buckets
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.validate_ptum()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """`PretrainedConfig.get_config_dict`, refusing a config.json whose `model_type` is not `ptum`.

        transformers only warns when a checkpoint of another model type is loaded into a PTUM class, then builds a
        PTUM model from whatever fields match. Every path from a checkpoint to a `PTUMConfig` passes here: the model
        classes' `from_pretrained`, `PTUMConfig.from_pretrained`, and `AutoConfig` with the checkpoint's remote code.
        """
        subfolder = kwargs.get("subfolder") or ""
        config_dict, unused = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict and config_dict.get("model_type") != cls.model_type:
            source = _config_source(pretrained_model_name_or_path, subfolder)
            raise ValueError(_model_type_refusal(source, config_dict.get("model_type", _MISSING)))
        return config_dict, unused

    @classmethod
    def from_preset(cls, name: str, size: str = "paper", recipe: str = "paper", **overrides) -> "PTUMConfig":
        """A config for one of the paper's user models (`han`, `hura`, `hsa`, `gru4rec`, `nativectr`, `bert4rec`) at
        one of the `SIZE_PRESETS` (`paper`, `small`, `tiny`) with one of the pre-training `RECIPES` (`paper`,
        `items`); the recipe wins over the size, `overrides` over all."""
        choices = (("preset", name, PRESETS), ("size", size, SIZE_PRESETS), ("recipe", recipe, RECIPES))
        for kind, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
        return cls(**{**PRESETS[name], **SIZE_PRESETS[size], **RECIPES[recipe], **overrides})

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`PretrainedConfig.save_pretrained`, after checking that what it writes loads back: an attribute set on the
        config that is neither a PTUM field nor one of transformers' would be refused by `from_pretrained`."""
        try:
            type(self).from_dict(self.to_dict())
        except ValueError as error:
            raise ValueError(f"this config would not load back, so it is not saved: {error}") from None
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def _set_num_labels(self, num_labels):
        """`num_labels` (e.g. `AutoModelForSequenceClassification.from_pretrained(p, num_labels=5)`) is the class
        count of the one label head; its class names go when the count changes (they named the old classes)."""
        if len(self.label_heads) != 1:
            raise ValueError(
                f"num_labels={num_labels!r} sets the class count of a model with one label head, but label_heads "
                f"has {len(self.label_heads)}: {self.label_heads}; pass label_heads={{'<name>': {num_labels!r}}} "
                "instead"
            )
        ((head, classes),) = self.label_heads.items()
        if num_labels != classes:
            self.label_heads = {head: num_labels}
            if isinstance(self.label_names, dict):
                self.label_names = {k: v for k, v in self.label_names.items() if k != head}

    def _check_label_names(self):
        if not isinstance(self.label_names, dict):
            raise ValueError(f"label_names must be a dict of head name -> class names, got {self.label_names!r}")
        for head, names in self.label_names.items():
            if head not in self.label_heads:
                raise ValueError(f"label_names has head {head!r}, which is not in label_heads {list(self.label_heads)}")
            if not isinstance(names, (list, tuple)) or any(
                isinstance(name, bool) or not isinstance(name, (str, int)) for name in names
            ):
                raise ValueError(f"label_names[{head!r}] must be a list of class names (strings or integers)")
            if len(names) != self.label_heads[head]:
                raise ValueError(
                    f"label_names[{head!r}] has {len(names)} class names but label_heads[{head!r}] has "
                    f"{self.label_heads[head]} classes"
                )
            if len({str(name) for name in names}) != len(names):
                raise ValueError(f"label_names[{head!r}] names a class twice (names are compared as text)")

    def validate_ptum(self):
        """Raise `ValueError` naming the first bad field and what it allows."""
        _check_choice("behavior_encoder_type", self.behavior_encoder_type, BEHAVIOR_ENCODER_TYPES)
        _check_choice("user_encoder_type", self.user_encoder_type, USER_ENCODER_TYPES)
        _check_choice("predictor", self.predictor, PREDICTOR_TYPES)
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > limit:
                raise ValueError(f"{name} must be at most {limit} (PTUMConfig's upper bound), got {value!r}")
        for name in (
            "freeze_text_encoder",
            "use_mbp",
            "use_nbp",
            "use_bag",
            "freeze_user_model",
            "share_ad_encoder",
            "classifier_layer_norm",
            "ad_prior",
            "ad_id_bias",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.cnn_kernel_size % 2 == 0:
            raise ValueError(f"cnn_kernel_size must be odd (keeps the text length), got {self.cnn_kernel_size}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_number(self.nbp_weight) or not 0.0 <= self.nbp_weight < math.inf:
            raise ValueError(f"nbp_weight (lambda) must be a finite number >= 0, got {self.nbp_weight!r}")
        if not _is_number(self.initializer_range) or not 0.0 <= self.initializer_range < math.inf:
            raise ValueError(f"initializer_range must be a finite number >= 0, got {self.initializer_range!r}")
        for name in ("behavior_id_buckets", "user_id_buckets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID_BUCKETS:
                raise ValueError(f"{name} must be an integer in [0, {MAX_ID_BUCKETS}] (0: none), got {value!r}")
        buckets = self.behavior_id_buckets
        if self.ad_id_bias and not buckets:
            raise ValueError("ad_id_bias needs behavior_id_buckets > 0 (the bias is indexed by the ad's id bucket)")
        if not _is_number(self.bag_weight) or not 0.0 <= self.bag_weight < math.inf:
            raise ValueError(f"bag_weight must be a finite number >= 0, got {self.bag_weight!r}")
        if not _is_number(self.bag_dropout) or not 0.0 <= self.bag_dropout < 1.0:
            raise ValueError(f"bag_dropout must be in [0, 1), got {self.bag_dropout!r}")
        if not (self.use_mbp or self.use_nbp or self.use_bag):
            raise ValueError(
                "use_mbp and use_nbp are both False (and use_bag too): at least one pre-training task must be on"
            )
        if not self.label_heads or not isinstance(self.label_heads, dict):
            raise ValueError(
                f"label_heads must be a non-empty dict of head name -> class count, got {self.label_heads!r}"
            )
        if len(self.label_heads) > MAX_LABEL_HEADS:
            raise ValueError(
                f"label_heads must have at most {MAX_LABEL_HEADS} heads (PTUMConfig's upper bound), "
                f"got {len(self.label_heads)}"
            )
        for head, classes in self.label_heads.items():
            if not isinstance(head, str):
                raise ValueError(f"label_heads keys must be head names (strings), got {head!r}")
            if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
                raise ValueError(f"label_heads[{head!r}] must be an integer >= 2 (number of classes), got {classes!r}")
            if classes > MAX_LABEL_CLASSES:
                raise ValueError(
                    f"label_heads[{head!r}] (number of classes) must be at most {MAX_LABEL_CLASSES} "
                    f"(PTUMConfig's upper bound), got {classes!r}"
                )
        self._check_label_names()
        if len(self.label_heads) == 1:
            # Here rather than in __init__: from_pretrained sets its overrides after __init__, and the model's
            # __init__ validates again, so the standard maps follow label_heads / label_names either way.
            ((head, classes),) = self.label_heads.items()
            names = self.label_names.get(head) or [f"LABEL_{i}" for i in range(classes)]
            self.id2label = {i: str(name) for i, name in enumerate(names)}
            self.label2id = {name: i for i, name in self.id2label.items()}
        if self.behavior_encoder_type == "pretrained":
            _check_text_encoder_config(self.text_encoder_config)
        elif self.text_encoder_config is not None and not isinstance(self.text_encoder_config, dict):
            kind = type(self.text_encoder_config).__name__
            raise ValueError(f"text_encoder_config must be a dict or null, got {kind}")
        if (
            isinstance(self.pad_token_id, bool)
            or not isinstance(self.pad_token_id, int)
            or not 0 <= self.pad_token_id < self.vocab_size
        ):
            raise ValueError(
                f"pad_token_id must be an id in [0, vocab_size={self.vocab_size}), got {self.pad_token_id!r}"
            )


_MISSING = object()


def _model_type_refusal(source: str, model_type) -> str:
    found = "has no model_type" if model_type is _MISSING else f"has model_type {model_type!r}"
    return (
        f"{source} {found}: PTUM classes load only configs of model_type {PTUMConfig.model_type!r} and do not build a "
        "model from another model's config. If it is another model's checkpoint, load it with that model's classes "
        "(for example transformers' AutoConfig / AutoModel)"
    )


def _config_source(pretrained_model_name_or_path, subfolder: str) -> str:
    """The config file `get_config_dict` read, for error messages: a path for local checkpoints, else the repo."""
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isfile(os.path.join(subfolder, path)):
        return repr(path)
    if os.path.isdir(path):
        return repr(os.path.join(path, subfolder, "config.json"))
    where = f"{subfolder}/config.json" if subfolder else "config.json"
    return f"{where} of the Hub repository {path!r}"


def _is_number(value) -> bool:
    """An int or float that is not a bool and not NaN (NaN fails every range check, but say so plainly)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _check_text_encoder_config(text_config):
    """The `pretrained` behavior encoder is built with `AutoModel.from_config(text_encoder_config)`: only a plain
    transformers architecture may be named there, so a checkpoint cannot reach registered or remote model classes."""
    if not isinstance(text_config, dict):
        raise ValueError(
            "behavior_encoder_type='pretrained' needs text_encoder_config (a dict); "
            "build the model with PTUMModel.from_text_encoder(<model name or path>)"
        )
    model_type = text_config.get("model_type")
    built_in = _built_in_model_types()
    if not isinstance(model_type, str) or (built_in is not None and model_type not in built_in):
        raise ValueError(
            f"text_encoder_config['model_type'] must name a model type built into transformers (e.g. 'bert'), "
            f"got {model_type!r}"
        )


@functools.cache
def _built_in_model_types():
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # layout of a future transformers: skip the check rather than refuse every checkpoint
        return None
    return frozenset(CONFIG_MAPPING_NAMES)


# Keys transformers itself writes into or accepts from a config.json besides a model's own fields. Most come from
# `PretrainedConfig` at run time (see `_transformers_config_keys`); these are the ones it handles without keeping
# them as attributes, and the common keys that transformers 4.x wrote, so that older checkpoints still load.
_TRANSFORMERS_EXTRA_KEYS = frozenset(
    {
        # written by save_pretrained / to_dict / the Auto classes
        "_name_or_path",
        "name_or_path",
        "architectures",
        "auto_map",
        "custom_pipelines",  # Pipeline.save_pretrained; PTUM checkpoints name their pipelines (pipeline_ptum.py)
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "quantization_config",
        # loader arguments that transformers routes into the config
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        # kept or dropped by transformers for backward compatibility
        "_commit_hash",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "is_decoder",
        "add_cross_attention",
        "cross_attention_hidden_size",
        "tie_encoder_decoder",
        "tie_word_embeddings",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "pruned_heads",
        "finetuning_task",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "gradient_checkpointing",
    }
)


@functools.cache
def _transformers_config_keys() -> frozenset:
    keys = set(_TRANSFORMERS_EXTRA_KEYS) | set(PretrainedConfig().to_dict())
    if dataclasses.is_dataclass(PretrainedConfig):
        keys |= {field.name for field in dataclasses.fields(PretrainedConfig)}
    try:  # generation settings found in old config.json files: transformers drops them on load
        from transformers import GenerationConfig

        keys |= set(GenerationConfig._get_default_generation_params())
    except (ImportError, AttributeError):
        pass
    return frozenset(keys)


def _check_unknown_keys(kwargs: dict):
    unknown = sorted(str(key) for key in kwargs if key not in _transformers_config_keys())
    if unknown:
        raise ValueError(
            f"unknown PTUMConfig key(s): {', '.join(unknown)}. They are neither PTUM fields nor attributes that "
            "transformers' PretrainedConfig defines; fix the spelling, or remove them from config.json "
            "(a checkpoint's config is refused rather than loaded with fields nobody reads)"
        )


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


__all__ = ["PTUMConfig", "PRESETS", "RECIPES", "SIZE_PRESETS"]
