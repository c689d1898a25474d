"""The terminal side of generation: streaming samples to a stream, and the `slm chat` loop.

Owns what a person watches: samples written one after another while the batch decodes
them together (`write_samples`), and the interactive prompt loop (`run_chat`) with line
editing and history (readline, where the platform has it), `/temp 0.7`-style commands,
Ctrl-C to stop a generation without leaving, Ctrl-D to quit. Being UI, it writes to the
`output` stream it is given; `cli.py` chooses that stream, and the model work is `api.py`'s.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from slm.api import LoadedModel
from slm.config import SampleConfig, sample_config
from slm.errors import SLMError
from slm.generation.compiled_step import load_in_background
from slm.generation.stream_text import Piece

# Command name -> SampleConfig field. Short forms first: they are what people type.
COMMANDS: dict[str, str] = {
    "temp": "temperature",
    "temperature": "temperature",
    "top-k": "top_k",
    "top-p": "top_p",
    "min-p": "min_p",
    "rep": "repetition_penalty",
    "repetition-penalty": "repetition_penalty",
    "max": "max_new_tokens",
    "max-new-tokens": "max_new_tokens",
    "seed": "seed",
    "samples": "num_samples",
    "num-samples": "num_samples",
    "stop": "stop",
}

HELP = """\
Type a prompt and press Enter; the model continues it (a chat-tuned model answers it,
remembering the conversation: /reset forgets it). Ctrl-C stops a generation,
Ctrl-D (or /quit) leaves.
  /temp 0.7       temperature (0: greedy)     /top-k 50     0: off
  /top-p 0.95     nucleus (1: off)            /min-p 0.05   0: off
  /rep 1.1        repetition penalty (1: off) /max 200      new tokens per prompt
  /seed 1         fixed seed (/seed none)     /samples 3    continuations per prompt
  /stop \\n\\n      stop string (/stop alone clears it; \\n and \\t are understood)
  /settings       show the current settings   /help         this text
A prompt that starts with / is typed with two: //usr/bin"""

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""Turn the backslash escapes people type for stop strings (\n \t \r \\) into characters.

    >>> unescape(r"\n\n") == "\n\n"
    True
    """
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


@dataclass(frozen=True)
class CommandResult:
    settings: SampleConfig
    message: str = ""
    quit: bool = False


def parse_command(line: str, settings: SampleConfig) -> CommandResult:
    """Apply one `/name value` line to `settings`; problems come back as the message.

    >>> parse_command("/temp 0", SampleConfig()).settings.temperature
    0.0
    """
    name, _, value = line.strip().removeprefix("/").partition(" ")
    name, value = name.lower(), value.strip()
    if name in ("quit", "exit", "q"):
        return CommandResult(settings, quit=True)
    if name in ("help", "h", "?"):
        return CommandResult(settings, HELP)
    if name in ("settings", "show"):
        return CommandResult(settings, describe(settings))
    field = COMMANDS.get(name)
    if field is None:
        return CommandResult(settings, f"unknown command /{name}; /help lists them")
    try:
        new = sample_config(settings, **{field: _parse_value(field, value)})
    except (ValueError, SLMError) as exc:
        message = exc.message if isinstance(exc, SLMError) else str(exc)
        return CommandResult(settings, f"/{name}: {message}")
    return CommandResult(new, describe(new, only=field))


_WHOLE_NUMBERS = {"top_k", "max_new_tokens", "seed", "num_samples"}


def _parse_value(field: str, value: str) -> Any:
    if field == "stop":
        return (unescape(value),) if value else ()
    if field == "seed" and value.lower() in ("none", "off", ""):
        return None
    if not value:
        raise ValueError("needs a value")
    return int(value) if field in _WHOLE_NUMBERS else float(value)


def describe(settings: SampleConfig, only: str | None = None) -> str:
    """`name = value` lines for the settings (or one of them)."""
    values = settings.to_dict()
    names = [only] if only else [n for n in values if n != "ignore_eot"]
    return "\n".join(f"{name} = {values[name]!r}" for name in names)


# --------------------------------------------------------------------------- streaming


def write_samples(pieces: Iterable[Piece], output: TextIO, num_samples: int) -> None:
    """Write samples one after another, each as soon as its text is decoded.

    The batch decodes all samples at once; the first streams live, later ones are held
    until the ones before them finish, then stream on. With several samples each gets a
    `--- sample i/N ---` header. Every sample ends with a newline.
    """
    held: list[list[str]] = [[] for _ in range(num_samples)]
    finished = [False] * num_samples
    ends_line = [True] * num_samples
    current = 0
    _start_sample(output, current, num_samples)
    for piece in pieces:
        held[piece.sample].append(piece.text)
        if piece.text:
            ends_line[piece.sample] = piece.text.endswith("\n")
        finished[piece.sample] = piece.finish_reason is not None
        while current < num_samples:
            output.write("".join(held[current]))
            held[current].clear()
            if not finished[current]:
                break
            if not ends_line[current]:
                output.write("\n")
            current += 1
            if current < num_samples:
                _start_sample(output, current, num_samples)
        output.flush()


def _start_sample(output: TextIO, index: int, num_samples: int) -> None:
    if num_samples > 1:
        output.write(f"--- sample {index + 1}/{num_samples} ---\n")


# --------------------------------------------------------------------------- the loop


def _enable_line_editing() -> None:
    """Arrow keys and history for `input()`; readline is missing on Windows, which is fine."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (importing it is what switches it on)


def run_chat(
    model: LoadedModel,
    settings: SampleConfig,
    output: TextIO,
    input_fn: Callable[[str], str] | None = None,
) -> int:
    """Prompt, continue, repeat, until Ctrl-D or /quit. Returns the exit code (0).

    `input_fn` defaults to `input` (with readline line editing); tests pass their own.
    """
    if input_fn is None:
        _enable_line_editing()
        input_fn = input
    load_in_background(model.model)  # the compiled decode step, while the user types
    name = model.folder.name if model.folder else "model"
    kind = "a message" if model.chat_template else "a prompt"
    output.write(f"slm chat with {name}: type {kind}; /help for commands, Ctrl-D to quit\n")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input_fn("> ")
        except EOFError:
            output.write("\n")
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            output.write("\n")
            continue
        if line.strip() in ("/reset", "/clear"):
            history.clear()
            output.write("conversation cleared\n")
        elif line.startswith("/") and not line.startswith("//"):
            result = parse_command(line, settings)
            if result.quit:
                return 0
            settings = result.settings
            if result.message:
                output.write(result.message + "\n")
        elif line.strip() and model.chat_template:
            history.append({"role": "user", "content": line.removeprefix("/")})
            reply = _respond(model, history, settings, output)
            history.append({"role": "assistant", "content": reply.strip()})
        elif line.strip():
            _respond(model, line.removeprefix("/"), settings, output)  # "//x" sends "/x"


def _respond(
    model: LoadedModel, prompt: str | list[dict[str, str]], settings: SampleConfig, output: TextIO
) -> str:
    """Stream the continuation of a prompt, or a chat model's reply to the conversation;
    returns the (first sample's) text."""
    if isinstance(prompt, str):
        generation = model.generation(prompt, settings)
    else:
        generation = model.chat_generation(prompt, settings)
    texts: list[str] = []

    def keep_first(pieces: Iterable[Piece]) -> Iterable[Piece]:
        for piece in pieces:
            if piece.sample == 0:
                texts.append(piece.text)
            yield piece

    try:
        write_samples(keep_first(generation), output, settings.num_samples)
    except KeyboardInterrupt:
        output.write("\n[stopped]\n")
    return "".join(texts)
