"""The prompt loop and the sample writer, driven by a fake input function, not a TTY."""

from __future__ import annotations

import io

import pytest

from slm.api import LoadedModel, load
from slm.cli.chat import parse_command, run_chat, unescape, write_samples
from slm.config import SampleConfig
from slm.generation.stream_text import Piece


@pytest.fixture(scope="module")
def model(make_model_dir) -> LoadedModel:
    return load(make_model_dir("the cat sat on the mat; héllo 日本語. " * 40), device="cpu")


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("/temp 0.7", "temperature", 0.7),
        ("/temperature 0", "temperature", 0.0),
        ("/top-k 40", "top_k", 40),
        ("/top-p 0.9", "top_p", 0.9),
        ("/min-p 0.05", "min_p", 0.05),
        ("/rep 1.2", "repetition_penalty", 1.2),
        ("/max 17", "max_new_tokens", 17),
        ("/seed 3", "seed", 3),
        ("/seed none", "seed", None),
        ("/samples 2", "num_samples", 2),
        ("/stop \\n\\n", "stop", ("\n\n",)),
        ("/stop", "stop", ()),
        ("  /TEMP   1.5  ", "temperature", 1.5),
    ],
)
def test_commands_change_one_setting(line, field, value):
    result = parse_command(line, SampleConfig(seed=1, stop=("x",)))
    assert getattr(result.settings, field) == value
    assert not result.quit and field in result.message


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("/temp -1", "--temperature"),
        ("/temp warm", "could not convert"),
        ("/top-k", "needs a value"),
        ("/top-p 2", "--top-p"),
        ("/bogus 1", "unknown command"),
    ],
)
def test_bad_commands_keep_the_settings_and_say_why(line, words):
    before = SampleConfig()
    result = parse_command(line, before)
    assert result.settings == before and words in result.message


def test_help_settings_and_quit():
    assert "/temp" in parse_command("/help", SampleConfig()).message
    assert "top_p = 0.95" in parse_command("/settings", SampleConfig()).message
    assert parse_command("/quit", SampleConfig()).quit
    assert unescape(r"a\tb\\n") == "a\tb\\n"


def scripted(*lines: str | type[BaseException]):
    """An input function that returns (or raises) each item in turn, then Ctrl-D."""
    items = iter(lines)

    def fake_input(prompt: str) -> str:
        item = next(items, EOFError)
        if isinstance(item, type):
            raise item
        return item

    return fake_input


def test_the_loop_generates_applies_commands_and_survives_ctrl_c(model):
    settings = SampleConfig(max_new_tokens=5, seed=0)
    out = io.StringIO()
    code = run_chat(
        model,
        settings,
        out,
        scripted("the cat", "/temp 0", KeyboardInterrupt, "the cat", "", "/nope", "//a path"),
    )
    assert code == 0

    def reply(prompt: str, **options) -> str:
        text = model.generate(prompt, settings=settings, **options)
        return text if text.endswith("\n") else text + "\n"

    sampled, greedy = reply("the cat"), reply("the cat", temperature=0)
    assert sampled != greedy  # so the transcript shows which one /temp 0 gave
    assert out.getvalue() == (
        f"slm chat with {model.folder.name}: type a prompt; /help for commands, Ctrl-D to quit\n"
        + sampled
        + "temperature = 0.0\n"
        + "\n"  # Ctrl-C at the prompt: a new line, and the loop goes on
        + greedy  # /temp 0 made the next generation greedy
        + "unknown command /nope; /help lists them\n"
        + reply("/a path", temperature=0)  # "//a path" was a prompt, not a command
        + "\n"  # Ctrl-D
    )


class InterruptingOutput(io.StringIO):
    """Raises Ctrl-C the first time generated text is written, as a user pressing it would."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def write(self, text: str) -> int:
        if self.armed and text:
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_a_generation_but_not_the_loop(model):
    out = InterruptingOutput()
    prompts = iter(["the cat", "the mat"])

    def fake_input(prompt: str) -> str:
        out.armed = True
        line = next(prompts, None)
        if line is None:
            out.armed = False
            raise EOFError
        return line

    settings = SampleConfig(max_new_tokens=50, ignore_eot=True, seed=1)
    assert run_chat(model, settings, out, fake_input) == 0
    assert out.getvalue().count("[stopped]") == 2


def test_samples_are_written_in_order_while_decoded_together():
    pieces = [
        Piece(1, "B1 "),
        Piece(0, "A1 "),
        Piece(1, "B2", "length"),
        Piece(2, "C1\n", "stop"),
        Piece(0, "A2", "stop"),
    ]
    out = io.StringIO()
    write_samples(pieces, out, 3)
    assert out.getvalue() == (
        "--- sample 1/3 ---\nA1 A2\n--- sample 2/3 ---\nB1 B2\n--- sample 3/3 ---\nC1\n"
    )
    single = io.StringIO()
    write_samples([Piece(0, "x"), Piece(0, "y", "length")], single, 1)
    assert single.getvalue() == "xy\n"
