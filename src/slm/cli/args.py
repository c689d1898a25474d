"""The flags of every `slm` subcommand: argparse definitions, help text and defaults.

Each `add_<name>` makes the subcommand's parser and returns it; `slm.cli.main` attaches the
handler, parses, runs the command and reports. The model and training flags are generated
from the `ModelConfig` / `TrainConfig` fields, so a new field becomes a flag without an edit
here, and the sampling flags shared by generate and chat are defined once. This module never
prints or exits (argparse does, for --help and bad flags, when `slm.cli.main` parses), and it reads
only `slm.config`, so `slm --help` starts without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from slm.config import DEFAULT_PRESET, PRESETS, ModelConfig, TrainConfig


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


def add_prepare(sub: Any) -> argparse.ArgumentParser:
    p = _subparser(
        sub,
        "prepare",
        "text -> trained BPE tokenizer + token files",
        "Read text sources, train a byte-level BPE tokenizer (or reuse one) and write\n"
        "train.bin / val.bin token files plus meta.json into --out.\n\n"
        "SOURCES: text files, folders (recursive), JSONL files (one record per line with a\n"
        "text field), hf:NAME[:CONFIG][@SPLIT] or a folder saved by datasets' save_to_disk,\n"
        "and `shakespeare` (the built-in corpus, the default when no source is given).\n\n"
        "--chat: SOURCES are JSONL files of conversations, one per line:\n"
        '  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}\n'
        "rendered with the ChatML template; only the assistant's tokens carry loss.",
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
    p.add_argument(
        "--chat", action="store_true", help="SOURCES are JSONL conversations (chat fine-tuning)"
    )
    p.add_argument(
        "--context-len",
        type=int,
        default=0,
        help="with --chat: skip conversations longer than this many tokens (default: keep all)",
    )
    return p


# --------------------------------------------------------------------------- train

_MODEL_HELP = {"qk_norm": "scale queries and keys to unit RMS per head before attention"}

_TRAIN_HELP = {
    "preset": "named model shape",
    "batch_size": "sequences per batch",
    "tokens_per_step": "tokens per optimizer step, accumulating batches (0: one batch)",
    "optimizer": "adamw, or muon (Muon for the hidden matrices, AdamW for the rest)",
    "lr": "AdamW's peak learning rate (default: 6e-3 for the embedding and gains under muon, "
    "2e-3 for everything under adamw)",
    "beta2": "AdamW's second-moment decay (default: 0.999 under muon, 0.95 under adamw)",
    "muon_lr": "peak learning rate of the hidden matrices under --optimizer muon",
    "lr_schedule": "wsd (hold the peak, decay over the last 30%%) or cosine",
    "min_lr_ratio": "the decay ends at lr * this",
    "warmup_steps": "linear warmup steps",
    "label_smoothing": "share of each target spread over the vocabulary while training",
    "max_steps": "stop after this many optimizer steps",
    "max_tokens": "stop after this many training tokens",
    "max_time": (
        "wall-clock budget such as 10m for the whole command, set-up and final evaluation "
        "included; the schedule is fitted to it"
    ),
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
    "init_from": "start from this model folder (fine-tuning): its shape, weights and tokenizer;"
    " defaults become lr 3e-4, warmup 20, weight decay 0, no label smoothing, 2 epochs",
}


def add_train(sub: Any) -> argparse.ArgumentParser:
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
        help_text = f"(default: {getattr(seed, f.name)} in {DEFAULT_PRESET})"
        if isinstance(getattr(seed, f.name), bool):  # --qk-norm / --no-qk-norm
            model_group.add_argument(
                f"--{f.name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                dest=f.name,
                default=None,
                help=f"{_MODEL_HELP.get(f.name, '')} {help_text}".strip(),
            )
            continue
        model_group.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=_field_type(f),
            dest=f.name,
            default=None,
            help=help_text,
        )
    train_group = p.add_argument_group("training")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name)
        help_text = f"{_TRAIN_HELP.get(f.name, '')} (default: {default!r})".strip()
        if f.name in ("lr", "beta2"):  # their defaults depend on --optimizer
            help_text = _TRAIN_HELP[f.name]
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
    return p


def _field_type(f: dataclasses.Field) -> type:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return {"int": int, "float": float}.get(kind, str)


# --------------------------------------------------------------------------- generate / chat


def add_generate(sub: Any) -> argparse.ArgumentParser:
    p = _subparser(
        sub,
        "generate",
        "generate text from a trained model",
        "Continue PROMPT with the model in RUN_DIR, streaming the text as it is decoded.\n"
        "No prompt starts a fresh document. Long prompts: --prompt-file FILE or - (stdin).\n\n"
        '  slm generate runs/NAME "Once upon a time" --seed 1 --num-samples 3 --stop "\\n\\n"\n'
        "  slm generate runs/NAME - --json < prompt.txt",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run (model) folder")
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
    return p


def add_chat(sub: Any) -> argparse.ArgumentParser:
    p = _subparser(
        sub,
        "chat",
        "interactive prompt loop with a trained model",
        "Type a prompt, read the continuation, repeat. /help lists the commands that change\n"
        "settings (/temp 0.7, /top-k 40, /max 100, ...); Ctrl-C stops a generation,\n"
        "Ctrl-D quits.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run (model) folder")
    _add_sampling_args(p)
    return p


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The flags of `SampleConfig`, shared by generate and chat."""
    from slm.config import SampleConfig  # light: no torch at import

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


# --------------------------------------------------------------------------- serve


def add_serve(sub: Any) -> argparse.ArgumentParser:
    p = _subparser(
        sub,
        "serve",
        "serve a model over OpenAI's HTTP API, with a playground page",
        "Serve the model in RUN_DIR: OpenAI's /v1/completions, /v1/chat/completions and\n"
        "/v1/models (streaming too), /health, and a playground page at /. Needs the\n"
        "extra: pip install 'slm[serve]'. Concurrent requests are decoded together.\n\n"
        "  slm serve runs/NAME                       # http://127.0.0.1:8000\n"
        "  slm serve runs/NAME --port 9000 --api-key SECRET",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run (model) folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it "
        "to the network)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on the API (default: $SLM_API_KEY, else "
        "none; the variable keeps the key out of `ps`)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        metavar="N",
        help="samples decoded together at most; more requests wait (default: 32)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for the model (default 0: 1 for a small model, else every core)",
    )
    return p


# --------------------------------------------------------------------------- eval / bench


def add_eval(sub: Any) -> argparse.ArgumentParser:
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
    p.add_argument("model", metavar="RUN_DIR", help="run (model) folder")
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
    return p


def add_export(sub: Any) -> argparse.ArgumentParser:
    p = _subparser(
        sub,
        "export",
        "write a model for transformers (hf) or llama.cpp (gguf)",
        "Export a model folder for the tools that run Llama models (Qwen3 with QK-norm).\n\n"
        "  slm export runs/NAME --format hf --out hf/NAME          # transformers folder\n"
        "  slm export runs/NAME --format gguf --out NAME.gguf --dtype q8_0   # llama.cpp\n\n"
        "hf: a folder that AutoModelForCausalLM / AutoTokenizer.from_pretrained load with no\n"
        "custom code (slm reads it back too). gguf: one file for llama.cpp (needs the gguf\n"
        "package: pip install 'slm[export]'); --dtype f32, f16 or q8_0.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run (model) folder")
    p.add_argument("--format", required=True, choices=["hf", "gguf"], help="what to write")
    p.add_argument("--out", required=True, help="output folder (hf) or .gguf file (gguf)")
    p.add_argument(
        "--dtype",
        default=None,
        help="gguf weights: f32 (default), f16 or q8_0; hf is always f32",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def add_bench(sub: Any) -> argparse.ArgumentParser:
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
    return p
