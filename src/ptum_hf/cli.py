"""`ptum-hf` command line: pretrain, finetune, embed, push, reproduce.

Each command's arguments are dataclasses parsed with `HfArgumentParser`: give flags, or one JSON/YAML file.

    ptum-hf pretrain logs.csv --size small --output_dir outputs/pretrain
    ptum-hf pretrain 'logs/*.parquet' --streaming --max_steps 20000 --size small --output_dir outputs/pretrain
    ptum-hf pretrain --dataset synthetic --num_users 2000 --output_dir outputs/pretrain
    ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --label_fraction 0.2
    ptum-hf embed --model_name_or_path outputs/pretrain/model --output_file outputs/users.parquet
    ptum-hf push outputs/pretrain/model --repo_id my-org/ptum-hsa
"""

import argparse
import contextlib
import json
import logging
import os
import sys

from transformers import HfArgumentParser, TrainingArguments


def parse(dataclass_types, argv, prog: str | None = None, shown_defaults: dict | None = None):
    """The dataclasses from flags or from one JSON/YAML file. `prog` names the command in usage lines;
    `shown_defaults` are the defaults that `--help` shows where the command applies its own (parsing keeps the
    dataclasses' defaults, so that the command can tell the flags a user gave from the rest)."""
    parser = HfArgumentParser(dataclass_types, prog=prog)
    if shown_defaults and ("-h" in argv or "--help" in argv):
        parser.set_defaults(**shown_defaults)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def cmd_pretrain(argv):
    """Pre-train a user model (MBP + NBP) on a behavior log or a built-in source; --streaming for a large log."""
    from .modelcard import PTUMModelCardData
    from .pretraining import PretrainingArguments, pretrain

    (args,) = parse(PretrainingArguments, log_as_dataset(argv), prog="ptum-hf pretrain [LOG]")
    print(f"model saved to {pretrain(args, card_data=PTUMModelCardData())}")


def log_as_dataset(argv) -> list[str]:
    """`ptum-hf pretrain logs.csv ...`: a first argument that is not a flag is the log (`--dataset`), unless it is
    the only argument and a JSON/YAML file, which holds the arguments (so a JSON-lines log alone: name it .jsonl)."""
    if not argv or argv[0].startswith("-") or (len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))):
        return argv
    if "dataset" in given_fields(argv[1:]):
        raise SystemExit(f"ptum-hf pretrain: two logs given ({argv[0]} and --dataset): give one")
    return ["--dataset", argv[0], *argv[1:]]


def given_fields(argv) -> set[str]:
    """The argument names a user set, from flags or from a JSON/YAML file."""
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        import yaml

        with open(argv[0]) as handle:
            return set((json.load(handle) if argv[0].endswith(".json") else yaml.safe_load(handle)) or {})
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def finetune_defaults(task: str | None) -> dict:
    """What `ptum-hf finetune <task>` applies where the user gives nothing (`task` None: for either task)."""
    from .finetuning import TASKS, training_defaults

    defaults = {**training_defaults(task or TASKS[0]), "output_dir": f"outputs/finetune-{task or '<task>'}"}
    if task is None:
        metrics = {name: training_defaults(name)["metric_for_best_model"] for name in TASKS}
        defaults["metric_for_best_model"] = ", ".join(f"{metric} ({name})" for name, metric in metrics.items())
    else:
        defaults["task"] = task
    return defaults


@contextlib.contextmanager
def info_logs():
    """ptum_hf's INFO lines (what was read, which head starts fresh) on stderr meanwhile."""
    log, handler = logging.getLogger("ptum_hf"), logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[ptum-hf] %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def cmd_finetune(argv):
    """Fine-tune a pre-trained (or new) model on demographics or CTR with the Trainer."""
    from .finetuning import TASKS, FinetuneArguments, default_training_arguments, run_finetuning

    usage = f"usage: ptum-hf finetune {{{','.join(TASKS)}}} [--flags | config.json] (ptum-hf finetune <task> --help)"
    if argv and argv[0] in ("-h", "--help"):  # the flags are the same for every task
        prog = f"ptum-hf finetune {{{','.join(TASKS)}}}"
        parse((FinetuneArguments, TrainingArguments), argv, prog=prog, shown_defaults=finetune_defaults(None))
    if not argv or argv[0] not in TASKS:
        raise SystemExit(usage)
    task, argv = argv[0], argv[1:]
    given = given_fields(argv)
    if not (len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))):
        argv = [*argv, "--task", task]
        if "output_dir" not in given:
            argv += ["--output_dir", f"outputs/finetune-{task}"]
    prog, shown = f"ptum-hf finetune {task}", finetune_defaults(task)
    args, parsed = parse((FinetuneArguments, TrainingArguments), argv, prog=prog, shown_defaults=shown)
    args.task = task
    # Start from the PTUM defaults (evaluate each epoch, keep the best, keep the collators' columns) and apply
    # only what the user set.
    overrides = {name: getattr(parsed, name) for name in given if hasattr(parsed, name) and name != "output_dir"}
    # The Trainer's own push would send weights without the modeling code: push through ptum_hf.hub instead.
    push = overrides.pop("push_to_hub", False)
    repo_id = overrides.pop("hub_model_id", None)
    training_args = default_training_arguments(parsed.output_dir, task, **overrides)
    with info_logs():
        metrics = run_finetuning(args, training_args, push_to=(repo_id or f"ptum-{task}") if push else None)
    print(json.dumps(metrics, indent=2))


def cmd_embed(argv):
    """Write user embeddings of a log (or a built-in source) to Parquet."""
    from .embedding import EmbedArguments, run_embedding

    (args,) = parse(EmbedArguments, argv, prog="ptum-hf embed")
    print(f"embeddings written to {run_embedding(args)}")


def cmd_push(argv):
    """Push a saved model folder (weights, code, tokenizer, card) to the Hugging Face Hub."""
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
    """Run the paper's experiments and write the results tables (results/)."""
    from .reproduce import main as reproduce_main

    reproduce_main(argv)


def cmd_export(argv):
    """Export a saved model to ONNX for serving: the user encoder and the checkpoint's head, tokenizer beside."""
    from .export import EXPORT_FORMATS

    parser = argparse.ArgumentParser(
        prog="ptum-hf export",
        description="Write ONNX graphs of a saved PTUM model (user encoder; demographics or CTR head when the "
        "checkpoint has one), with its config and tokenizer, into one folder that serves alone.",
    )
    parser.add_argument("model_dir", help="a saved PTUM model folder (weights, config.json, tokenizer)")
    parser.add_argument("--output", required=True, help="the folder to write (replaced as a whole if it exists)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="(default: %(default)s)")
    parser.add_argument("--no_check", action="store_true", help="skip comparing each graph with PyTorch on a batch")
    args = parser.parse_args(argv)
    from .export import export_onnx

    try:
        folder = export_onnx(args.model_dir, args.output, check=not args.no_check)
    except (OSError, ValueError, ImportError) as error:  # a bad folder or a missing extra: the message says all
        raise SystemExit(f"ptum-hf export: {error}") from None
    print(f"exported to {folder}")


COMMANDS = {
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "embed": cmd_embed,
    "push": cmd_push,
    "reproduce": cmd_reproduce,
    "export": cmd_export,
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


def usage() -> str:
    """`ptum-hf --help`: the commands, one line each (the first line of each command's docstring), and examples."""
    width = max(map(len, COMMANDS))
    summaries = {name: ((command.__doc__ or "").strip().splitlines() or [""])[0] for name, command in COMMANDS.items()}
    lines = [f"  {name:<{width}}  {summary}" for name, summary in summaries.items()]
    examples = __doc__.split("\n\n", 2)[2].rstrip()
    return (
        f"usage: ptum-hf {{{','.join(COMMANDS)}}} [flags | arguments.json/.yaml]\n\ncommands:\n"
        + "\n".join(lines)
        + f"\n\n`ptum-hf <command> --help` lists a command's flags with their defaults. Examples:\n\n{examples}"
    )


def main(argv=None):
    if argv is None:  # run as the `ptum-hf` program (or `python -m ptum_hf.cli`), not called from Python code
        enable_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"{usage()}\n\nptum-hf: {'give a command' if not argv else f'unknown command {argv[0]!r}'}")
    from .locking import OutputInUseError

    try:
        COMMANDS[argv[0]](argv[1:])
    except OutputInUseError as error:  # an operator's mistake, not a bug: the message says all
        raise SystemExit(f"ptum-hf {argv[0]}: {error}") from None


if __name__ == "__main__":
    main()
