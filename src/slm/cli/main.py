"""The `slm` command line: `main`, the parser assembly, one small `_cmd_<name>` per subcommand.

The flags themselves (names, help, defaults) are defined in `slm.cli.args`; this module wires
each subcommand to its handler and turns parsed flags into library calls. It is the only
module that prints for the user or decides exit codes. Library errors (`SLMError`) become one
line on stderr plus a hint, exit 1 (failure) or 2 (usage); Ctrl-C exits 130 after the library
has saved what it must. Heavy imports (torch, tokenizers) happen inside each command, so
`slm --help` starts fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from slm import __version__
from slm.cli import args as cli_args
from slm.config import MODEL_FIELDS, TRAIN_FIELDS
from slm.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, SLMError

DESCRIPTION = """\
Train a small GPT-style language model on your own text, then use it.

  slm prepare my_texts/ --out data/mine     # text -> tokenizer + token files
  slm train data/mine --preset seed-2.5m    # train, with progress and checkpoints
  slm generate runs/NAME "Once upon a time" # sample from the trained model
  slm eval runs/NAME held_out.txt           # loss, perplexity, bits per byte
  slm export runs/NAME --format hf --out hf/NAME   # for transformers (or gguf: llama.cpp)

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
    cli_args.add_prepare(sub).set_defaults(handler=_cmd_prepare)
    cli_args.add_train(sub).set_defaults(handler=_cmd_train)
    cli_args.add_generate(sub).set_defaults(handler=_cmd_generate)
    cli_args.add_chat(sub).set_defaults(handler=_cmd_chat)
    cli_args.add_serve(sub).set_defaults(handler=_cmd_serve)
    cli_args.add_eval(sub).set_defaults(handler=_cmd_eval)
    cli_args.add_export(sub).set_defaults(handler=_cmd_export)
    cli_args.add_bench(sub).set_defaults(handler=_cmd_bench)
    return parser


# --------------------------------------------------------------------------- prepare


def _cmd_prepare(args: argparse.Namespace) -> int:
    common: dict[str, Any] = {
        "tokenizer_path": args.tokenizer,
        "vocab_size": args.vocab_size,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "force": args.force,
        "log": _log,
    }
    if args.chat:
        from slm.data.chat import prepare_chat

        summary: Any = prepare_chat(args.sources, args.out, context_len=args.context_len, **common)
    else:
        from slm.data.prepare import prepare

        summary = prepare(
            args.sources, args.out, glob=args.glob, text_field=args.text_field, **common
        )
    print(summary.format())
    return 0


# --------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # before torch loads: --max-time is the user's whole wait
    from slm.cli.progress import TerminalProgress
    from slm.training.loop import TrainRequest, train

    fields = set(MODEL_FIELDS) | set(TRAIN_FIELDS)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in fields}
    request = TrainRequest(
        data=list(args.data),
        out=args.out,
        resume=args.resume,
        config_file=args.config,
        preset=args.preset,
        vocab_size=args.vocab_size,
        init_from=overrides.pop("init_from", None),
        overrides=overrides,
        started=started,
    )
    result = train(request, log=_log, progress=TerminalProgress(_log))
    if result.sample:
        print(result.sample)
    if result.stop_signal == "SIGTERM":
        return EXIT_TERMINATED
    return EXIT_INTERRUPTED if result.interrupted else 0


# --------------------------------------------------------------------------- generate / chat


def _sample_settings(args: argparse.Namespace) -> Any:
    """A validated SampleConfig from the flags (before the model loads: fail fast)."""
    from slm.cli.chat import unescape
    from slm.config import SampleConfig

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
    from slm.device import available_cores, set_threads
    from slm.generation.generation import decode_threads
    from slm.model import count_parameters

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
        from slm.data.text_files import replace_undecodable

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
    from slm.cli.chat import run_chat, write_samples

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


def _cmd_chat(args: argparse.Namespace) -> int:
    from slm.cli.chat import run_chat

    settings = _sample_settings(args)
    return run_chat(_load_for_generation(args, settings.num_samples), settings, sys.stdout)


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    if not 0 < args.port < 65536:
        raise SLMError(f"--port must be 1 to 65535, got {args.port}", exit_code=EXIT_USAGE)
    if args.max_batch < 1 or args.threads < 0:
        raise SLMError("--max-batch must be 1 or more, --threads 0 or more", exit_code=EXIT_USAGE)
    from slm.api import load
    from slm.device import available_cores, set_threads
    from slm.generation.generation import decode_threads
    from slm.model import count_parameters
    from slm.serve.app import create_app, run_server  # checks the serve extra first

    model = load(args.model, args.device, warn=_log)
    # One thread for a small model, as for `slm generate`: the event loop and the clients
    # need a core too, and a parallel region stalls whenever one of its cores is busy.
    set_threads(args.threads or decode_threads(count_parameters(model.model), 1, available_cores()))
    api_key = args.api_key or os.environ.get("SLM_API_KEY") or None
    app = create_app(model, api_key=api_key, max_batch=args.max_batch)
    _log(f"slm: serving {args.model} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    if api_key:
        _log("slm: the API needs `Authorization: Bearer <key>`")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"slm: warning: listening on {args.host}: other machines can reach this server")
    run_server(app, args.host, args.port)
    return 0


# --------------------------------------------------------------------------- eval / bench


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


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from slm.export.hf import export_hf

        if args.dtype not in (None, "f32"):
            raise SLMError("the hf format is written in f32 only", exit_code=EXIT_USAGE)
        result = export_hf(args.model, args.out, force=args.force)
    else:
        from slm.export.gguf import export_gguf

        result = export_gguf(args.model, args.out, dtype=args.dtype or "f32", force=args.force)
    _log(f"exported in {result.time_s:.2f} s, {result.size_bytes / 1e6:.2f} MB")
    print(result.path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from slm.bench.suite import carried_quality, quality, run_suite, write_results

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
