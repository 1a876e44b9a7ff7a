"""`ptum-hf` command line: pretrain, finetune, embed, push, reproduce.

Each command's arguments are dataclasses parsed with `HfArgumentParser`: give flags, or one JSON/YAML file.

    ptum-hf pretrain --dataset synthetic --num_users 2000 --output_dir outputs/pretrain
    ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --label_fraction 0.2
    ptum-hf embed --model_name_or_path outputs/pretrain/model --output_file outputs/users.parquet
    ptum-hf push outputs/pretrain/model --repo_id my-org/ptum-hsa
"""

import argparse
import json
import os
import sys

from transformers import HfArgumentParser, TrainingArguments


def parse(dataclass_types, argv):
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def cmd_pretrain(argv):
    from .modelcard import PTUMModelCardData
    from .pretraining import PretrainingArguments, pretrain

    (args,) = parse(PretrainingArguments, argv)
    print(f"model saved to {pretrain(args, card_data=PTUMModelCardData())}")


def given_fields(argv) -> set[str]:
    """The argument names a user set, from flags or from a JSON/YAML file."""
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        import yaml

        with open(argv[0]) as handle:
            return set((json.load(handle) if argv[0].endswith(".json") else yaml.safe_load(handle)) or {})
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def cmd_finetune(argv):
    from .finetuning import TASKS, FinetuneArguments, default_training_arguments, run_finetuning

    if not argv or argv[0] not in TASKS:
        raise SystemExit("usage: ptum-hf finetune {demographics,ctr} [--flags | config.json]")
    task, argv = argv[0], argv[1:]
    given = given_fields(argv)
    if not (len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))):
        argv = [*argv, "--task", task]
        if "output_dir" not in given:
            argv += ["--output_dir", f"outputs/finetune-{task}"]
    args, parsed = parse((FinetuneArguments, TrainingArguments), argv)
    args.task = task
    # Start from the PTUM defaults (evaluate each epoch, keep the best, keep the collators' columns) and apply
    # only what the user set.
    overrides = {name: getattr(parsed, name) for name in given if hasattr(parsed, name) and name != "output_dir"}
    # The Trainer's own push would send weights without the modeling code: push through ptum_hf.hub instead.
    push = overrides.pop("push_to_hub", False)
    repo_id = overrides.pop("hub_model_id", None)
    training_args = default_training_arguments(parsed.output_dir, task, **overrides)
    metrics = run_finetuning(args, training_args, push_to=(repo_id or f"ptum-{task}") if push else None)
    print(json.dumps(metrics, indent=2))


def cmd_embed(argv):
    from .embedding import EmbedArguments, run_embedding

    (args,) = parse(EmbedArguments, argv)
    print(f"embeddings written to {run_embedding(args)}")


def cmd_push(argv):
    parser = argparse.ArgumentParser(prog="ptum-hf push", description="Push a saved PTUM model folder to the Hub.")
    parser.add_argument("folder")
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    from transformers import AutoConfig, AutoTokenizer

    from .hub import push_to_hub
    from .modeling_ptum import PTUMModel, PTUMPreTrainedModel

    config = AutoConfig.from_pretrained(args.folder)
    architecture = (config.architectures or ["PTUMModel"])[0]
    model_class = next((c for c in PTUMPreTrainedModel.__subclasses__() if c.__name__ == architecture), PTUMModel)
    model = model_class.from_pretrained(args.folder)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    from huggingface_hub import ModelCard

    card_path = os.path.join(args.folder, "README.md")
    card = ModelCard.load(card_path) if os.path.exists(card_path) else None  # the card itself, not its path
    info = push_to_hub(model, args.repo_id, tokenizer=tokenizer, card=card, private=args.private)
    print(f"pushed: {info}")


def cmd_reproduce(argv):
    from .reproduce import main as reproduce_main

    reproduce_main(argv)


COMMANDS = {
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "embed": cmd_embed,
    "push": cmd_push,
    "reproduce": cmd_reproduce,
}


def enable_huge_pages():
    """Put large CPU tensors on transparent huge pages (Linux): a fresh activation then costs far fewer page faults,
    and the elementwise passes of a CPU training step run faster (benchmarks/RESULTS.md). The user's own setting,
    such as THP_MEM_ALLOC_ENABLE=0, stands.

    Only the program does this: a library must not change its user's environment. torch reads the variable once, at
    its first CPU tensor allocation (importing ptum_hf, transformers and torch allocates none), so this must run
    before any command builds a tensor; later it changes nothing."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv=None):
    if argv is None:  # run as the `ptum-hf` program (or `python -m ptum_hf.cli`), not called from Python code
        enable_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(f"usage: ptum-hf {{{','.join(COMMANDS)}}} ... (ptum-hf --help)")
    from .locking import OutputInUseError

    try:
        COMMANDS[argv[0]](argv[1:])
    except OutputInUseError as error:  # an operator's mistake, not a bug: the message says all
        raise SystemExit(f"ptum-hf {argv[0]}: {error}") from None


if __name__ == "__main__":
    main()
