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
from slm.config import (
    DEFAULT_PRESET,
    MODEL_FIELDS,
    PRESETS,
    TRAIN_FIELDS,
    ModelConfig,
    TrainConfig,
)
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
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing prepared folder (other non-empty folders are never deleted)",
    )
    p.set_defaults(handler=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from slm.prepare import prepare

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
    seed = ModelConfig(**PRESETS[DEFAULT_PRESET])
    for f in dataclasses.fields(ModelConfig):
        if f.name == "vocab_size":
            continue  # comes from the tokenizer
        model_group.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=_field_type(f),
            dest=f.name,
            default=None,
            help=f"(default: {getattr(seed, f.name)} in {DEFAULT_PRESET})",
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

    fields = set(MODEL_FIELDS) | set(TRAIN_FIELDS)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in fields}
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
    p = _subparser(
        sub,
        "generate",
        "generate text from a trained model",
        "Continue PROMPT with the model in RUN_DIR, streaming the text as it is decoded.\n"
        "No prompt starts a fresh document. Long prompts: --prompt-file FILE or - (stdin).\n\n"
        '  slm generate runs/NAME "Once upon a time" --seed 1 --num-samples 3 --stop "\\n\\n"\n'
        "  slm generate runs/NAME - --json < prompt.txt",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    p.add_argument("prompt", nargs="?", help='prompt text ("-" reads stdin)')
    p.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (UTF-8)")
    p.add_argument("-i", "--interactive", action="store_true", help="prompt loop, as `slm chat`")
    p.add_argument(
        "--json",
        action="store_true",
        help="instead of streaming, print one JSON object per sample: text, prompt_tokens, "
        "new_tokens, finish_reason, tokens_per_second",
    )
    p.add_argument(
        "--stats", action="store_true", help="print tokens/s and time to first token on stderr"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole window every token (slow; for checking the KV cache)",
    )
    _add_sampling_args(p)
    p.set_defaults(handler=_cmd_generate)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The flags of `SampleConfig`, shared by generate and chat."""
    from slm.sampling import SampleConfig  # light: no torch at import

    d = SampleConfig()
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        metavar="N",
        help=f"tokens to generate per sample (default: {d.max_new_tokens})",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        metavar="T",
        help=f"randomness; 0 is greedy (default: {d.temperature})",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=d.top_k,
        metavar="K",
        help=f"draw from the K most likely tokens; 0: off (default: {d.top_k})",
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=d.top_p,
        metavar="P",
        help=f"nucleus: the likeliest tokens holding P of the probability; "
        f"1: off (default: {d.top_p})",
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=d.min_p,
        metavar="P",
        help=f"drop tokens less likely than P times the best one; 0: off (default: {d.min_p})",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=d.repetition_penalty,
        metavar="R",
        help=f"above 1 discourages repeating context tokens (default: {d.repetition_penalty})",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="fixed seed: the same options give the same output (default: random)",
    )
    g.add_argument(
        "--num-samples",
        type=int,
        default=d.num_samples,
        metavar="N",
        help="independent continuations, sampled together as one batch (default: 1)",
    )
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop at TEXT, which is not printed; repeatable; \\n and \\t are understood",
    )
    g.add_argument(
        "--ignore-eot",
        action="store_true",
        help="never stop at <|endoftext|> (for fixed-length benchmarks)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    g.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: 1 for a small model at batch 1, else every core)",
    )


def _sample_settings(args: argparse.Namespace) -> Any:
    """A validated SampleConfig from the flags (before the model loads: fail fast)."""
    from slm.chat import unescape
    from slm.sampling import SampleConfig

    if args.threads < 0:
        raise SLMError("--threads must be 0 (automatic) or more", exit_code=EXIT_USAGE)
    return SampleConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        num_samples=args.num_samples,
        stop=tuple(unescape(s) for s in args.stop),
        ignore_eot=args.ignore_eot,
    )


def _load_for_generation(args: argparse.Namespace, num_samples: int) -> Any:
    """Load the model, then pick CPU threads for it (the library leaves threads alone)."""
    from slm.api import load
    from slm.generate import decode_threads
    from slm.model import count_parameters
    from slm.runtime import available_cores, set_threads

    model = load(args.model, args.device, warn=_log)
    n_params = count_parameters(model.model)
    set_threads(args.threads or decode_threads(n_params, num_samples, available_cores()))
    return model


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file:
        raise SLMError(
            "give the prompt as text or with --prompt-file, not both", exit_code=EXIT_USAGE
        )
    if args.prompt == "-":
        # Read bytes, not locale-decoded text: bytes that are not UTF-8 become U+FFFD and are
        # counted, as in `slm prepare`. A replaced sys.stdin may have no buffer; read its text.
        from slm.textio import replace_undecodable

        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read().decode("utf-8", "surrogateescape") if stream else sys.stdin.read()
        text, bad_bytes = replace_undecodable(raw)
        if bad_bytes:
            _log(f"warning: {bad_bytes} undecodable bytes replaced in the prompt (not UTF-8)")
        return text
    if not args.prompt_file:
        return args.prompt or ""
    from pathlib import Path

    path = Path(args.prompt_file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SLMError(f"prompt file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SLMError(
            f"cannot read prompt file {path}: {exc}", hint="prompt files must be UTF-8 text"
        ) from exc


def _cmd_generate(args: argparse.Namespace) -> int:
    from slm.chat import run_chat, write_samples

    settings = _sample_settings(args)
    if args.interactive:
        if args.prompt is not None or args.prompt_file:
            raise SLMError(
                "-i takes its prompts interactively; drop the prompt argument", exit_code=EXIT_USAGE
            )
        return run_chat(_load_for_generation(args, settings.num_samples), settings, sys.stdout)
    prompt = _read_prompt(args)
    model = _load_for_generation(args, settings.num_samples)
    generation = model.generation(prompt, settings, use_cache=not args.no_cache)
    if args.json:
        for _ in generation:
            pass
        _print_json(generation.result)
    else:
        write_samples(generation, sys.stdout, settings.num_samples)
    if args.stats:
        _log_stats(generation.result)
    return 0


def _print_json(result: Any) -> None:
    """One JSON object per sample, one per line: the continuation and its numbers."""
    import json

    for index, c in enumerate(result.completions):
        record = {
            "sample": index,
            "text": c.text,
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": c.new_tokens,
            "finish_reason": c.finish_reason,
            "tokens_per_second": round(c.tokens_per_s, 1),
            "time_to_first_token_s": round(result.time_to_first_token_s, 4),
        }
        print(json.dumps(record))


def _log_stats(result: Any) -> None:
    _log(
        f"{result.new_tokens} new tokens in {result.elapsed_s:.2f} s "
        f"({result.tokens_per_s:.0f} tokens/s), first token after "
        f"{result.time_to_first_token_s * 1000:.0f} ms, prompt {result.prompt_tokens} tokens"
    )


def _add_chat(sub: Any) -> None:
    p = _subparser(
        sub,
        "chat",
        "interactive prompt loop with a trained model",
        "Type a prompt, read the continuation, repeat. /help lists the commands that change\n"
        "settings (/temp 0.7, /top-k 40, /max 100, ...); Ctrl-C stops a generation,\n"
        "Ctrl-D quits.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    _add_sampling_args(p)
    p.set_defaults(handler=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    from slm.chat import run_chat

    settings = _sample_settings(args)
    return run_chat(_load_for_generation(args, settings.num_samples), settings, sys.stdout)


# --------------------------------------------------------------------------- eval / bench


def _add_eval(sub: Any) -> None:
    p = _subparser(
        sub,
        "eval",
        "loss, perplexity and bits per byte of a model on any text",
        "Score a model on text: loss (nats/token), perplexity and bits per byte.\n\n"
        "TEXT_SOURCES are anything `slm prepare` accepts (files, folders, JSONL, hf:...,\n"
        "shakespeare); none means the run's own validation split. Every token is scored\n"
        "once, with non-overlapping full-context windows; --stride N slides the window by N\n"
        "tokens so each token sees more context (slower).\n\n"
        "bits per byte = total loss in nats / (ln 2 * UTF-8 bytes of the scored text):\n"
        "independent of the tokenizer, so any two models scored this way compare.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run or exported model folder")
    p.add_argument("sources", nargs="*", metavar="TEXT_SOURCES", help="text to score")
    p.add_argument(
        "--split",
        choices=["val", "train"],
        default="val",
        help="with no sources: which split of the run's data (default: val)",
    )
    p.add_argument(
        "--stride", type=int, help="slide windows by this many tokens (default: context)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="windows per forward pass (default: 8)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=0, help="score only the first N tokens (default: 0, all)"
    )
    p.add_argument("--glob", help="file pattern inside folders")
    p.add_argument("--text-field", default="text", help="JSONL / dataset text field")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["auto", "float32", "bfloat16"],
        help="precision (default: float32, exact figures)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from slm.evaluate import evaluate_model

    result = evaluate_model(
        args.model,
        args.sources,
        split=args.split,
        stride=args.stride,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        glob=args.glob,
        text_field=args.text_field,
        device=args.device,
        dtype=args.dtype,
        log=_log,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.2f}  "
            f"{result.bpb:.4f} bits/byte  ({result.tokens:,} tokens, {result.bytes:,} bytes)"
        )
    return 0


def _add_bench(sub: Any) -> None:
    p = _subparser(
        sub,
        "bench",
        "measure speed and memory on this machine",
        "Measure this machine's matmul peaks, then prepare, train and generate speed and\n"
        "memory of seed-2.5m; write results/<machine>.json and a Markdown table.",
    )
    p.add_argument("--out", default="benchmarks/results", help="results folder")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    p.add_argument(
        "--quality",
        metavar="BUDGET",
        nargs="?",
        const="10m",
        help="also train seed-2.5m for BUDGET (default 10m) and score the held-out plays",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from slm.bench import carried_quality, quality, run_suite, write_results

    results = run_suite(_log, quick=args.quick, compile_cpu=not args.no_compile)
    if args.quality:
        results["quality"] = quality(args.quality, log=_log)
        _log(f"quality: {results['quality']['bpb']:.3f} bits/byte on the held-out plays")
    elif earlier := carried_quality(results, args.out):
        results["quality"] = earlier  # 10 minutes to redo; kept, with the date it was measured
        _log(f"quality: kept from the run of {earlier['measured']} (--quality measures it anew)")
    json_path, md_path = write_results(results, args.out)
    print(md_path.read_text(encoding="utf-8"), end="")
    _log(f"written: {json_path}, {md_path}")
    return 0


# --------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    """Progress and warnings go to stderr; stdout carries only the product."""
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    entry()
