"""The `slm` command line: argparse, one small `_cmd_<name>` per subcommand.

This is the only module that prints for the user or decides exit codes. Library errors
(`SLMError`) become one line on stderr plus a hint, exit 1 (failure) or 2 (usage); Ctrl-C
exits 130 after the library has saved what it must. Heavy imports (torch, tokenizers) happen
inside each command, so `slm --help` starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from slm import __version__
from slm.config import DEFAULT_PRESET, PRESETS, ModelConfig, TrainConfig
from slm.errors import EXIT_INTERRUPTED, EXIT_USAGE, SLMError

DESCRIPTION = """\
Train a small GPT-style language model on your own text, then use it.

  slm prepare my_texts/ --out data/mine     # text -> tokenizer + token files
  slm train data/mine --preset seed-2.5m    # train, with progress and checkpoints
  slm generate runs/NAME "Once upon a time" # sample from the trained model
  slm eval runs/NAME held_out.txt           # loss, perplexity, bits per byte

With no data, slm uses its built-in Shakespeare corpus: `slm train` alone trains a model.
"""


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except SLMError as exc:
        print(f"slm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nslm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `slm generate ... | head`: the reader left, which is fine
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"slm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_chat(sub)
    _add_eval(sub)
    _add_bench(sub)
    return parser


def _subparser(
    sub: Any, name: str, help_text: str, description: str = ""
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# --------------------------------------------------------------------------- prepare


def _add_prepare(sub: Any) -> None:
    p = _subparser(
        sub,
        "prepare",
        "text -> trained BPE tokenizer + token files",
        "Read text sources, train a byte-level BPE tokenizer (or reuse one) and write\n"
        "train.bin / val.bin token files plus meta.json into --out.\n\n"
        "SOURCES: text files, folders (recursive), JSONL files (one record per line with a\n"
        "text field), hf:NAME[:CONFIG][@SPLIT] or a folder saved by datasets' save_to_disk,\n"
        "and `shakespeare` (the built-in corpus, the default when no source is given).",
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="inputs (default: shakespeare)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--vocab-size", type=int, default=4096, help="tokenizer vocabulary (default: 4096)"
    )
    p.add_argument("--tokenizer", help="reuse this tokenizer.json instead of training one")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of documents for validation (default: 0.05)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the train/val split (default: 0)")
    p.add_argument("--glob", help="file pattern inside folders (default: common text extensions)")
    p.add_argument(
        "--text-field",
        default="text",
        help="JSONL / dataset field holding the text (default: text)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.set_defaults(handler=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from slm.data import prepare

    summary = prepare(
        args.sources,
        args.out,
        vocab_size=args.vocab_size,
        tokenizer_path=args.tokenizer,
        val_fraction=args.val_fraction,
        seed=args.seed,
        glob=args.glob,
        text_field=args.text_field,
        force=args.force,
        log=_log,
    )
    print(summary.format())
    return 0


# --------------------------------------------------------------------------- train

_TRAIN_HELP = {
    "preset": "named model shape",
    "batch_size": "sequences per batch",
    "tokens_per_step": "tokens per optimizer step, accumulating batches (0: one batch)",
    "lr": "peak learning rate",
    "min_lr_ratio": "cosine decays to lr * this",
    "warmup_steps": "linear warmup steps",
    "max_steps": "stop after this many optimizer steps",
    "max_tokens": "stop after this many training tokens",
    "max_time": "wall-clock budget such as 10m; the schedule is fitted to it",
    "epochs": "passes over the training tokens",
    "stop_after": "stop with a checkpoint after N steps of a longer schedule",
    "eval_every": "evaluate every N steps",
    "eval_tokens": "validation tokens per evaluation",
    "save_every": "checkpoint every N steps or a time such as 5m (default: each eval)",
    "sample_tokens": "tokens in the sample printed at each evaluation (0: none)",
    "device": "auto, cpu, cuda or mps",
    "dtype": "auto (bf16 where it is fast), float32 or bfloat16",
    "compile": "torch.compile: auto (on for CUDA), on or off",
    "threads": "CPU threads (0: all available cores)",
    "wandb": "log metrics to Weights & Biases (if installed)",
    "tensorboard": "log metrics to TensorBoard (if installed)",
}


def _add_train(sub: Any) -> None:
    p = _subparser(
        sub,
        "train",
        "train a model (default: seed-2.5m on the built-in corpus)",
        "Train a model. DATA is a folder from `slm prepare` or any source `slm prepare`\n"
        "accepts (prepared into the run folder first); none means the built-in corpus.\n"
        "Settings: defaults < --preset < --config FILE < flags. With no budget flag,\n"
        "training runs for 5 minutes.",
    )
    p.add_argument("data", nargs="*", metavar="DATA", help="prepared folder or text sources")
    p.add_argument("--out", help="run folder (default: a new folder under runs/)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped"
    )
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help=f"model shape (default: {DEFAULT_PRESET})"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        help="tokenizer vocabulary when DATA is prepared here (default: 4096)",
    )
    model_group = p.add_argument_group("model (default: the preset's)")
    for f in dataclasses.fields(ModelConfig):
        if f.name == "vocab_size":
            continue  # comes from the tokenizer
        model_group.add_argument(
            f"--{f.name.replace('_', '-')}", type=_field_type(f), dest=f.name, default=None
        )
    train_group = p.add_argument_group("training")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name)
        help_text = f"{_TRAIN_HELP.get(f.name, '')} (default: {default!r})".strip()
        if isinstance(default, bool):
            train_group.add_argument(
                flag, action="store_true", dest=f.name, default=None, help=help_text
            )
        elif f.name == "compile":
            train_group.add_argument(
                flag,
                nargs="?",
                const="on",
                choices=["auto", "on", "off"],
                dest=f.name,
                default=None,
                help=help_text,
            )
        else:
            train_group.add_argument(
                flag, type=_field_type(f), dest=f.name, default=None, help=help_text
            )
    p.set_defaults(handler=_cmd_train)


def _field_type(f: dataclasses.Field) -> type:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return {"int": int, "float": float}.get(kind, str)


def _cmd_train(args: argparse.Namespace) -> int:
    from slm.train import TrainRequest, train

    overrides = {k: v for k, v in vars(args).items() if v is not None}
    request = TrainRequest(
        data=list(args.data),
        out=args.out,
        resume=args.resume,
        config_file=args.config,
        preset=args.preset,
        vocab_size=args.vocab_size,
        overrides=overrides,
    )
    result = train(request, log=_log)
    if result.sample:
        print(result.sample)
    return EXIT_INTERRUPTED if result.interrupted else 0


# --------------------------------------------------------------------------- generate / chat


def _add_generate(sub: Any) -> None:
    p = _subparser(sub, "generate", "generate text from a trained model")
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    p.add_argument("prompt", nargs="?", default="", help='prompt text ("-" reads stdin)')
    p.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    raise SLMError("slm generate is not available yet")


def _add_chat(sub: Any) -> None:
    p = _subparser(sub, "chat", "interactive prompt loop with a trained model")
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    p.set_defaults(handler=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    raise SLMError("slm chat is not available yet")


# --------------------------------------------------------------------------- eval / bench


def _add_eval(sub: Any) -> None:
    p = _subparser(sub, "eval", "loss, perplexity and bits per byte of a model on any text")
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    p.set_defaults(handler=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    raise SLMError("slm eval is not available yet")


def _add_bench(sub: Any) -> None:
    p = _subparser(sub, "bench", "measure speed and memory on this machine")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    raise SLMError("slm bench is not available yet")


# --------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    """Progress and warnings go to stderr; stdout carries only the product."""
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    entry()
