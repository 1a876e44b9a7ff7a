"""What decides the numbers: the experiments, user-model variants and model sizes, `Settings`, the command line."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, replace

from ..configuration_ptum import MAX_ID_BUCKETS, RECIPES, SIZE_PRESETS

# What a recipe changes in a preset, in the tables' model names (the items recipe replaces every preset's user encoder).
RECIPE_MARKS = {"items": "bag prediction, ids, attention pooling"}
EXPERIMENTS = ("baselines", "table2", "table3", "ablation", "lambda", "k", "scale", "probe")
DEMOGRAPHIC_PRESETS = ("han", "hura", "hsa")
CTR_PRESETS = ("gru4rec", "nativectr", "bert4rec")
MOVIELENS = "movielens-100k"
SYNTHETIC = "synthetic"

DEFAULT_USER_LR = 1e-3

# The default run's settings for a (task, dataset) where they measured better than the paper's: on MovieLens, the
# `items` recipe and a fitted head for demographics (results/studies/bag_prediction.md, head_fitting.md) and ids
# with an ad and a user bias for CTR (results/studies/ctr_ids.md). A value given on the command line wins;
# `--no-measured_defaults` runs the paper's everywhere. The ablation, lambda and K study the paper's objective: they
# always run the paper's.
MEASURED_DEFAULTS = {
    ("demographics", MOVIELENS): dict(
        recipe="items", pretrain_epochs=300, pretrain_batch_size=128, max_behaviors=800, fit_head=True
    ),
    ("ctr", MOVIELENS): dict(
        config_overrides={"behavior_id_buckets": 65536}, ctr_ad_id_bias=True, ctr_user_id_buckets=65536
    ),
}
# The measured defaults that were chosen for the measured recipe: another `--recipe` drops them.
RECIPE_BOUND = ("recipe", "pretrain_epochs", "pretrain_batch_size", "max_behaviors")
# What a field left unset (None) means where no measured default applies.
PAPER_DEFAULTS = dict(
    recipe="paper",
    pretrain_epochs=10,
    pretrain_batch_size=32,
    ctr_ad_id_bias=False,
    ctr_user_id_buckets=0,
    fit_head=False,
)

# name: (FinetuneArguments overrides, learning rate). A new head needs large steps, the pre-trained user model small
# ones: PTUM finetune's rate is the head's, and the user model gets its own (`variant_recipe`).
VARIANTS = {
    "scratch": ({"from_scratch": True}, 1e-3),
    "ptum_frozen": ({"freeze_user_model": True}, 1e-2),
    "ptum_finetune": ({}, 1e-2),
}
VARIANT_NAMES = {
    "scratch": "from scratch",
    "ptum_frozen": "PTUM no finetune",
    "ptum_finetune": "PTUM finetune",
    "majority": "majority class",
    "lr_tfidf": "LR, TF-IDF bag-of-items",
    "lr_tfidf_words": "LR, TF-IDF words of the texts",
    "lr_tfidf_same": "LR, TF-IDF bag of the same recent items",
    "svd_lr": "LR, SVD of the TF-IDF bag on all users (no labels)",
    "item_mean": "item mean click rate",
    "cosine_tfidf": "history-ad TF-IDF cosine (untrained)",
    "lr_user_item": "LR, user + item one-hot",
    "lr_mf": "LR, user + item one-hot + SVD user x item factors (no labels)",
    "probe_ptum": "LR on frozen PTUM user vectors",
    "probe_random": "LR on random-init user vectors",
}


def variant_recipe(
    variant: str, learning_rate: float | None = None, user_model_learning_rate: float | None = DEFAULT_USER_LR
) -> tuple[dict, float]:
    """A variant's FinetuneArguments overrides and the Trainer's learning rate. PTUM finetune takes `learning_rate`
    for its head when given, and `user_model_learning_rate` for the user model (None: the head's for all)."""
    overrides, rate = VARIANTS[variant]
    overrides = dict(overrides)
    if variant == "ptum_finetune":
        rate = learning_rate or rate
        if user_model_learning_rate:
            overrides["user_model_learning_rate"] = user_model_learning_rate
    return overrides, rate


@dataclass
class Settings:
    """Everything that decides the numbers; written next to the tables."""

    data_dir: str | None = None
    size: str = "small"
    recipe: str | None = None  # configuration_ptum.RECIPES; None: the cell's (`for_cell`)
    repeats: int = 5
    # The MovieLens demographic baselines and the probe fit LR in seconds a split, and a 5-split mean of a paired
    # difference moves by +-0.03 (results/studies/bag_prediction.md, section 10): they run over at least this many.
    linear_repeats: int = 20
    ratios: tuple = (0.2, 0.5, 1.0)
    demographic_presets: tuple = DEMOGRAPHIC_PRESETS
    ctr_presets: tuple = CTR_PRESETS
    ctr_datasets: tuple = (MOVIELENS, SYNTHETIC)
    synthetic_users: int = 3000
    pretrain_epochs: int | None = None
    pretrain_max_steps: int = -1
    pretrain_batch_size: int | None = None
    pretrain_learning_rate: float = 1e-3
    finetune_epochs: int = 40  # MovieLens: fewer epochs under-train the fine-tunes
    finetune_batch_size: int = 64
    # The scale setting: few labeled users, and every epoch is evaluated on a large validation split
    scale_finetune_epochs: int = 5
    ctr_max_steps: int = 150
    ctr_eval_steps: int = 75
    ctr_eval_samples: int | None = 2000  # validation rows for CTR model selection (the test split stays whole)
    ctr_repeats: int = 5  # CTR's time split is the same for every repeat: only the labeled subset and seed vary
    sweep_repeats: int = 3  # lambda and K
    ablation_ratio: float = 0.2
    ablation_tasks: tuple = ("demographics", "ctr")
    lambdas: tuple = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    ks: tuple = (1, 2, 3, 4, 5)
    scale_users: int = 51250
    scale_labeled: tuple = (200, 1000)  # 250:1 and 50:1; the sweeps use the first
    scale_pretrain_steps: int = 1500
    tokenizer_vocab_size: int = 8000
    behavior_tokens: str = "text"
    max_behaviors: int | None = None  # None: the size's own
    config_overrides: dict = field(default_factory=dict)  # PTUMConfig fields over the size's (e.g. the objective)
    classifier_layer_norm: bool = True
    fit_head: bool | None = None  # FinetuneArguments.fit_head: demographic heads start at a linear probe (LP-FT)
    keep_fitted_start: bool = False  # FinetuneArguments.keep_fitted_start: end no lower than a fitted start
    ctr_ad_prior: bool = False  # PTUMConfig.ad_prior for the CTR models
    ctr_ad_id_bias: bool | None = None  # PTUMConfig.ad_id_bias for the CTR models (needs behavior_id_buckets)
    ctr_user_id_buckets: int | None = None  # PTUMConfig.user_id_buckets for the CTR models (0: no user bias)
    ctr_fit_id_biases: bool = True  # FinetuneArguments.fit_id_biases: id biases start from the training clicks
    ctr_id_bias_l2: float | None = None  # FinetuneArguments.id_bias_l2 (None: chosen on the validation impressions)
    measured_defaults: bool = True  # MEASURED_DEFAULTS for the fields left unset
    cell: tuple | None = None  # (task, dataset) once resolved by `for_cell`
    variants: tuple = tuple(VARIANTS)  # of table2, table3, scale, probe... (the others run what they need)
    user_model_learning_rate: float | None = DEFAULT_USER_LR  # PTUM finetune only; None: the head's rate for all
    learning_rate: float | None = None  # PTUM finetune: the Trainer's (head's) learning rate; None: VARIANTS'
    sweep_data: str = "scale"  # where ablation, lambda and K run: movielens or the synthetic scale setting
    tag: str = ""
    seed: int = 0

    def __post_init__(self):
        for name, allowed in (("size", SIZE_PRESETS), ("recipe", RECIPES)):
            if getattr(self, name) not in allowed and (name, getattr(self, name)) != ("recipe", None):
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")

    def value(self, name: str):
        """A field's value, the paper's (PAPER_DEFAULTS) where it is unset."""
        value = getattr(self, name)
        return PAPER_DEFAULTS[name] if value is None else value

    def for_cell(self, task: str, dataset: str, measured: bool = True) -> Settings:
        """These settings as the runs of one task on one dataset use them: each unset field from MEASURED_DEFAULTS
        (unless `measured` or `measured_defaults` is off, or a recipe is given where the measured default is a
        recipe), else from PAPER_DEFAULTS; the config overrides given win over the measured ones."""
        if self.cell is not None:  # its resolved fields would read as given
            raise ValueError(f"these settings are already those of {self.cell}")
        chosen = MEASURED_DEFAULTS.get((task, dataset), {}) if measured and self.measured_defaults else {}
        if chosen.get("recipe", self.recipe) != self.recipe and self.recipe is not None:
            # another recipe given: the measured length and history were chosen for the measured one
            chosen = {name: value for name, value in chosen.items() if name not in RECIPE_BOUND}
        unset = {name: value for name, value in {**PAPER_DEFAULTS, **chosen}.items() if getattr(self, name) is None}
        overrides = {**chosen.get("config_overrides", {}), **self.config_overrides}
        return replace(self, **unset, config_overrides=overrides, cell=(task, dataset))

    @property
    def ctr_head(self) -> dict:
        """The CTR models' PTUMConfig head options that are on."""
        head = {
            "ad_prior": self.ctr_ad_prior,
            "ad_id_bias": self.value("ctr_ad_id_bias"),
            "user_id_buckets": self.value("ctr_user_id_buckets"),
        }
        return {name: value for name, value in head.items() if value}

    @property
    def model_overrides(self) -> dict:
        overrides = {**SIZE_PRESETS[self.size], **RECIPES[self.value("recipe")]}
        if self.behavior_tokens == "item":  # one token per behavior: an item-id embedding model
            overrides["max_tokens_per_behavior"] = 1
        if self.max_behaviors is not None:
            overrides["max_behaviors"] = self.max_behaviors
        overrides.update(self.config_overrides)
        return overrides

    def fits_start(self, preset: str) -> bool:
        """Whether this preset's fine-tuning starts fitted: a demographic head (fit_head), or the id biases a CTR
        model has, from the training clicks (ctr_fit_id_biases)."""
        if preset in DEMOGRAPHIC_PRESETS:
            return bool(self.value("fit_head"))
        biases = self.value("ctr_ad_id_bias") or self.value("ctr_user_id_buckets")
        return preset in CTR_PRESETS and self.ctr_fit_id_biases and bool(biases)

    @property
    def history_length(self) -> int:
        """How many of a user's most recent behaviors the user models see (the paper: 100)."""
        from ..configuration_ptum import PTUMConfig

        return self.model_overrides.get("max_behaviors", PTUMConfig().max_behaviors)

    def model_label(self, preset: str, max_steps: int | None = None) -> str:
        """The name a user model gets in the tables: the preset, then each departure from the default recipe.
        `max_steps`: the pre-training steps of a grid that fixes them (the synthetic scale setting's)."""
        user_lr = self.user_model_learning_rate
        recipe, epochs, batch = (self.value(name) for name in ("recipe", "pretrain_epochs", "pretrain_batch_size"))
        user_buckets = self.value("ctr_user_id_buckets")
        if max_steps is not None:  # the grid's steps decide the length, whatever the epochs
            length, paper_length = f"{max_steps} steps", f"{Settings.scale_pretrain_steps} steps"
        else:
            steps = self.pretrain_max_steps
            length = f"{steps} steps" if steps > 0 else f"{epochs} epoch{'s' * (epochs != 1)}"
            paper_length = f"{PAPER_DEFAULTS['pretrain_epochs']} epochs"
        marks = [
            (self.size != "small", f"[{self.size}]"),
            (recipe != "paper", f"[{recipe} recipe: {RECIPE_MARKS.get(recipe, '')}]"),
            (self.behavior_tokens == "item", "(item ids)"),
            (self.max_behaviors is not None, f"[{self.max_behaviors} behaviors]"),
            (not self.classifier_layer_norm and preset in DEMOGRAPHIC_PRESETS, "(no LN head)"),
            (preset in DEMOGRAPHIC_PRESETS and self.fits_start(preset), "(head fitted)"),
            (self.ctr_ad_prior and preset in CTR_PRESETS, "(ad prior)"),
            (self.value("ctr_ad_id_bias") and preset in CTR_PRESETS, "(ad id bias)"),
            (bool(user_buckets) and preset in CTR_PRESETS, f"(user id bias {user_buckets})"),
            (preset in CTR_PRESETS and self.fits_start(preset), "(id biases fitted)"),
            (
                preset in CTR_PRESETS and self.fits_start(preset) and self.ctr_id_bias_l2 is not None,
                f"(id bias l2 {self.ctr_id_bias_l2:g})" if self.ctr_id_bias_l2 else "",
            ),
            (self.keep_fitted_start and self.fits_start(preset), "(start kept if better)"),
            ((length, batch) != (paper_length, PAPER_DEFAULTS["pretrain_batch_size"]), f"[PT {length}, batch {batch}]"),
            (
                self.ctr_max_steps != Settings.ctr_max_steps and preset in CTR_PRESETS,
                f"[FT {self.ctr_max_steps} steps]",
            ),
            (
                self.pretrain_learning_rate != Settings.pretrain_learning_rate,
                f"[PT lr {self.pretrain_learning_rate:g}]",
            ),
            (bool(self.learning_rate), f"[lr {self.learning_rate:g}]" if self.learning_rate else ""),
            (user_lr is None, "[one lr]"),
            (user_lr not in (None, DEFAULT_USER_LR), f"[user lr {user_lr:g}]" if user_lr else ""),
            (
                bool(self.config_overrides),
                "(" + ", ".join(f"{k}={v}" for k, v in sorted(self.config_overrides.items())) + ")",
            ),
            (bool(self.tag), f"{{{self.tag}}}"),
        ]
        return " ".join([preset] + [mark for wanted, mark in marks if wanted])

    @property
    def linear_splits(self) -> int:
        """How many splits the MovieLens demographic baselines and the probe run over."""
        return max(self.repeats, self.linear_repeats)


QUICK = dict(
    size="tiny",
    repeats=1,
    linear_repeats=1,
    ratios=(0.5,),
    demographic_presets=("hsa",),
    ctr_presets=("nativectr",),
    ctr_datasets=(SYNTHETIC,),
    synthetic_users=160,
    pretrain_epochs=1,
    pretrain_max_steps=4,
    pretrain_batch_size=16,
    finetune_epochs=1,
    scale_finetune_epochs=1,
    finetune_batch_size=32,
    ctr_max_steps=4,
    ctr_eval_steps=2,
    ablation_ratio=0.5,
    lambdas=(0.0, 1.0),
    ks=(1, 2),
    scale_users=200,
    scale_labeled=(4,),
    scale_pretrain_steps=4,
    tokenizer_vocab_size=400,
)


def parse_args(argv=None):
    from . import __doc__ as description

    parser = argparse.ArgumentParser(
        prog="ptum-hf reproduce", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="results", help="Tables, plots, raw records.")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="Pre-trained models and Trainer folders (default: outputs/reproduce, or a folder under "
        "output_dir for --quick).",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny settings on a small synthetic dataset.")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"Subset of {','.join(EXPERIMENTS)}.")
    parser.add_argument("--repeats", type=int, default=None, help="Splits per cell (seed r = 0..repeats-1).")
    parser.add_argument(
        "--linear_repeats",
        type=int,
        default=None,
        help="The MovieLens demographic baselines and the probe run over max(repeats, this) splits (default 20).",
    )
    parser.add_argument(
        "--presets", default=None, help="Restrict the presets (of table2 and table3), e.g. hsa or hsa,bert4rec."
    )
    parser.add_argument("--ratios", default=None, help="Label ratios, e.g. 0.2,0.5,1.0.")
    parser.add_argument("--ctr_datasets", default=None, help=f"{MOVIELENS},{SYNTHETIC} or one of them.")
    parser.add_argument("--size", choices=tuple(SIZE_PRESETS), default=None, help="Model size (PTUMConfig overrides).")
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="Pre-training recipe (configuration_ptum.RECIPES) for every run: paper or items (ids, bag prediction, "
        "attention pooling). Default: each task and dataset's measured default (MEASURED_DEFAULTS: items for "
        "MovieLens demographics), else paper.",
    )
    parser.add_argument(
        "--measured_defaults",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Where a setting measured better than the paper's on a task and dataset (MEASURED_DEFAULTS: MovieLens "
        "demographics and CTR), use it for what the command line leaves unset (default); --no-measured_defaults: "
        "the paper's everywhere.",
    )
    parser.add_argument(
        "--behavior_tokens",
        choices=("text", "item"),
        default=None,
        help="text: WordPiece tokens of the behavior text (default); item: one token per distinct "
        "behavior (item identity, no text).",
    )
    parser.add_argument(
        "--max_behaviors",
        type=int,
        default=None,
        help="Most recent behaviors per user the user models see (default: the size's; small: 50).",
    )
    parser.add_argument(
        "--config_overrides",
        default=None,
        help="PTUMConfig fields set over the model size's, as a JSON object, e.g. '{\"num_negatives\": 8}'; they "
        "are part of the pre-training's identity and show in the model's name in the tables.",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help=f"Restrict the user-model variants, e.g. ptum_finetune (of {','.join(VARIANTS)}).",
    )
    parser.add_argument(
        "--classifier_layer_norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LayerNorm on the user vector before the demographic classifier (PTUMConfig).",
    )
    parser.add_argument(
        "--fit_head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Demographic heads start at a logistic regression of the user vectors before fine-tuning "
        "(FinetuneArguments.fit_head, LP-FT).",
    )
    parser.add_argument(
        "--keep_fitted_start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="A fitted start (--fit_head, --ctr_fit_id_biases) is kept if fine-tuning does not beat it on the "
        "validation split (FinetuneArguments.keep_fitted_start; default: off).",
    )
    parser.add_argument(
        "--ctr_ad_prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CTR models add a learned score of the ad alone to the click logit (PTUMConfig.ad_prior).",
    )
    parser.add_argument(
        "--ctr_ad_id_bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CTR models add a learned bias per ad identity (PTUMConfig.ad_id_bias; needs behavior_id_buckets; "
        "default: on for MovieLens, MEASURED_DEFAULTS).",
    )
    parser.add_argument(
        "--ctr_fit_id_biases",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CTR models' id biases start at a logistic regression of the training clicks on ad and user identity "
        "(FinetuneArguments.fit_id_biases; default: on); --no-ctr_fit_id_biases: at 0.",
    )
    parser.add_argument(
        "--ctr_id_bias_l2",
        type=float,
        default=None,
        help="The L2 penalty of that logistic regression (FinetuneArguments.id_bias_l2; default: chosen on the "
        "validation impressions).",
    )
    parser.add_argument(
        "--ctr_user_id_buckets",
        type=int,
        default=None,
        help="CTR models add a learned bias per user identity, in this many hashed buckets (PTUMConfig."
        "user_id_buckets; 0: none; default: 65536 for MovieLens, MEASURED_DEFAULTS, else 0).",
    )
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="PTUM finetune: the Trainer's (the head's) learning rate (default: 1e-2, VARIANTS).",
    )
    parser.add_argument(
        "--sweep_data",
        choices=("movielens", "scale"),
        default=None,
        help="Where the ablation, lambda and K run: the synthetic `scale` setting (default: "
        "scale_users pre-train, the first scale_labeled labeled; the CTR ablation on the "
        "synthetic CTR task) or MovieLens.",
    )
    parser.add_argument(
        "--user_model_learning_rate",
        type=float,
        default=None,
        help="PTUM finetune: the user model's own learning rate (default 1e-3; the head keeps the "
        "variant's); 0: the head's rate for the whole model.",
    )
    parser.add_argument(
        "--pretrain_epochs", type=int, default=None, help="Default: 10, or MEASURED_DEFAULTS' (MovieLens demographics)."
    )
    parser.add_argument("--pretrain_max_steps", type=int, default=None)
    parser.add_argument(
        "--pretrain_batch_size",
        type=int,
        default=None,
        help="Users per pre-training step. Default: 32, or MEASURED_DEFAULTS' (MovieLens demographics).",
    )
    parser.add_argument("--pretrain_learning_rate", type=float, default=None, help="Pre-training's rate (1e-3).")
    parser.add_argument("--finetune_epochs", type=int, default=None)
    parser.add_argument(
        "--scale_finetune_epochs",
        type=int,
        default=None,
        help="Fine-tuning epochs in the synthetic scale setting (and the sweeps run there).",
    )
    parser.add_argument("--ctr_max_steps", type=int, default=None)
    parser.add_argument("--synthetic_users", type=int, default=None)
    parser.add_argument("--scale_users", type=int, default=None)
    parser.add_argument(
        "--scale_labeled",
        default=None,
        help="Labeled training users of the scale setting, e.g. 200,1000 (the sweeps use the first).",
    )
    parser.add_argument(
        "--ctr_repeats", type=int, default=None, help="Repeats of the CTR fine-tunes (at most --repeats)."
    )
    parser.add_argument("--sweep_repeats", type=int, default=None, help="Repeats of lambda and K (at most --repeats).")
    parser.add_argument(
        "--ctr_eval_samples", type=int, default=None, help="Validation impressions for CTR model selection; 0: all."
    )
    parser.add_argument("--ablation_tasks", default=None, help="demographics,ctr (HSA and BERT4Rec) or one of them.")
    parser.add_argument("--ablation_ratio", type=float, default=None, help="Label ratio of ablation, lambda, K.")
    parser.add_argument(
        "--tag",
        default=None,
        help="Appended to the model name in the tables, e.g. 'long PT', to keep "
        "a variant of the settings apart from the default runs.",
    )
    parser.add_argument("--data_dir", default=None, help="MovieLens-100K folder (default: the loader's search).")
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads.")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="Every planned job (pre-trainings, fine-tunes, baselines, probes) runs in this many worker processes, "
        "which share the threads. Default: 2 where there are 2 or more cores, 1 with --quick.",
    )
    return parser.parse_args(argv)


def build_settings(args) -> Settings:
    settings = Settings(**QUICK) if args.quick else Settings()
    changes = {}
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.ratios:
        changes["ratios"] = tuple(float(r) for r in args.ratios.split(","))
    if args.presets:
        chosen = [p.strip() for p in args.presets.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in DEMOGRAPHIC_PRESETS + CTR_PRESETS]
        if unknown:
            raise SystemExit(f"unknown preset(s) {unknown}; allowed: {', '.join(DEMOGRAPHIC_PRESETS + CTR_PRESETS)}")
        changes["demographic_presets"] = tuple(p for p in chosen if p in DEMOGRAPHIC_PRESETS)
        changes["ctr_presets"] = tuple(p for p in chosen if p in CTR_PRESETS)
    if args.variants:
        chosen = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if not chosen or any(v not in VARIANTS for v in chosen):
            raise SystemExit(f"variants must be among {', '.join(VARIANTS)}; got {args.variants!r}")
        changes["variants"] = chosen
    if args.ablation_tasks:
        changes["ablation_tasks"] = tuple(t.strip() for t in args.ablation_tasks.split(",") if t.strip())
    if args.scale_labeled:
        try:
            changes["scale_labeled"] = tuple(int(n) for n in args.scale_labeled.split(",") if n.strip())
        except ValueError:
            raise SystemExit(
                f"scale_labeled must be comma-separated counts, e.g. 200,1000; got {args.scale_labeled!r}"
            ) from None
    if args.ctr_datasets:
        changes["ctr_datasets"] = tuple(d.strip() for d in args.ctr_datasets.split(",") if d.strip())
    for name in (
        "size",
        "recipe",
        "pretrain_epochs",
        "pretrain_max_steps",
        "pretrain_batch_size",
        "pretrain_learning_rate",
        "finetune_epochs",
        "scale_finetune_epochs",
        "ctr_max_steps",
        "synthetic_users",
        "scale_users",
        "ctr_repeats",
        "sweep_repeats",
        "linear_repeats",
        "ctr_eval_samples",
        "data_dir",
        "behavior_tokens",
        "ablation_ratio",
        "tag",
        "max_behaviors",
        "classifier_layer_norm",
        "fit_head",
        "keep_fitted_start",
        "ctr_ad_prior",
        "ctr_ad_id_bias",
        "ctr_user_id_buckets",
        "ctr_fit_id_biases",
        "ctr_id_bias_l2",
        "measured_defaults",
        "user_model_learning_rate",
        "learning_rate",
        "sweep_data",
    ):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.config_overrides:
        changes["config_overrides"] = parse_config_overrides(args.config_overrides)
    for name in ("user_model_learning_rate", "ctr_eval_samples"):  # 0: none (one learning rate; all rows)
        if changes.get(name) == 0:
            changes[name] = None
    settings = replace(settings, **changes)
    if any(not 0.0 < r <= 1.0 for r in settings.ratios):
        raise SystemExit(f"ratios must be in (0, 1]; got {settings.ratios}")
    if settings.value("pretrain_batch_size") < 1 or settings.value("pretrain_epochs") < 1:
        raise SystemExit(
            "pretrain_batch_size and pretrain_epochs must be >= 1; got "
            f"{settings.value('pretrain_batch_size')}, {settings.value('pretrain_epochs')}"
        )
    l2 = settings.ctr_id_bias_l2
    if l2 is not None and not (math.isfinite(l2) and l2 > 0):
        raise SystemExit(f"ctr_id_bias_l2 must be a finite number > 0; got {l2}")
    if l2 is not None and not settings.ctr_fit_id_biases:
        raise SystemExit("ctr_id_bias_l2 has no effect with --no-ctr_fit_id_biases (no id biases are fitted)")
    if not settings.pretrain_learning_rate > 0:
        raise SystemExit(f"pretrain_learning_rate must be > 0; got {settings.pretrain_learning_rate}")
    if min(settings.repeats, settings.ctr_repeats, settings.sweep_repeats, settings.linear_repeats) < 1:
        raise SystemExit("repeats, ctr_repeats, sweep_repeats and linear_repeats must be >= 1")
    if not settings.scale_labeled or min(settings.scale_labeled) < 1:
        raise SystemExit(f"scale_labeled must be positive counts; got {settings.scale_labeled}")
    if not 0 <= settings.value("ctr_user_id_buckets") <= MAX_ID_BUCKETS:
        raise SystemExit(
            f"ctr_user_id_buckets must be in [0, {MAX_ID_BUCKETS}] (0: none); got {settings.ctr_user_id_buckets}"
        )
    if args.jobs is None:
        args.jobs = 1 if args.quick else min(2, os.cpu_count() or 1)
    if args.jobs < 1:
        raise SystemExit(f"jobs must be >= 1; got {args.jobs}")
    if settings.max_behaviors is not None and settings.max_behaviors < 2:
        raise SystemExit(
            f"max_behaviors must be >= 2 (NBP needs a past and a next behavior); got {settings.max_behaviors}"
        )
    return settings


def parse_config_overrides(text: str) -> dict:
    """A JSON object of PTUMConfig fields, checked by building a config with them."""
    import json

    from ..configuration_ptum import PTUMConfig

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--config_overrides is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise SystemExit(f"--config_overrides must be a JSON object; got {text!r}")
    try:
        PTUMConfig(**overrides).validate_ptum()
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--config_overrides: {error}") from None
    return overrides
