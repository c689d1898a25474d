"""Bad input, end to end: every command, run as a real process, answers one clear line.

Each case runs `python -m slm ...` and checks the exit code (2: a usage error, 1: a
failure), that stderr names the problem (and no traceback), and that stdout carries nothing
that could pass for a result. The table below is what the README's promise means.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import slm

FAST = {"device": "cpu", "dtype": "float32", "compile": "off", "sample_tokens": 0, "threads": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_dir) -> Path:
    """A folder holding a finished run (`run`), its data, and text to point commands at."""
    root = tmp_path_factory.mktemp("bad_input")
    slm.train(str(corpus_dir), out=root / "run", preset="tiny", max_steps=4, vocab_size=300, **FAST)
    shutil.copytree(corpus_dir, root / "text")
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "empty.txt").write_text("")
    (root / "junk" / "blob.bin").write_bytes(bytes(range(256)) * 40)
    (root / "empty.txt").write_text("")
    (root / "unknown.toml").write_text("bogus_setting = 1\n")
    (root / "wrong_type.toml").write_text("lr = 'fast'\n")
    return root


def _model_variant(world: Path, name: str, change: Callable[[Path], None]) -> str:
    folder = world / name
    if not folder.exists():
        shutil.copytree(world / "run", folder)
        (folder / ".lock").unlink(missing_ok=True)
        change(folder)
    return str(folder)


def _edit_config(key: str, value: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return change


class _RunsCode:
    """A pickle whose loading would run a command (it must never be loaded)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_state(folder: Path) -> None:
    with open(folder / "train_state.pt", "wb") as f:
        pickle.dump(_RunsCode(folder / "PWNED"), f)


def _other_tokenizer(folder: Path) -> None:
    from slm.tokenizer.bpe import Tokenizer

    Tokenizer.from_file(folder / "tokenizer.json").with_chat_tokens().save(
        folder / "tokenizer.json"
    )


# (id, argv with {w} for the world folder and {m:NAME} for a model variant, code, message)
CASES: list[tuple[str, list[str], int, str]] = [
    ("prepare missing path", ["prepare", "{w}/nothere", "--out", "{w}/o1"], 2, "source not found"),
    ("prepare empty folder", ["prepare", "{w}/empty", "--out", "{w}/o2"], 1, "no text files"),
    ("prepare only empty or binary", ["prepare", "{w}/junk", "--out", "{w}/o3"], 1, "empty"),
    ("prepare existing --out", ["prepare", "{w}/text", "--out", "{w}/run"], 1, "already exists"),
    ("prepare bad vocab", ["prepare", "{w}/text", "--out", "{w}/o4", "--vocab-size", "10"], 2,
     "--vocab-size 10 is out of range"),
    ("train negative lr", ["train", "{w}/text", "--lr", "-0.001", "--out", "{w}/t1"], 2,
     "--lr must be"),
    ("train negative batch", ["train", "{w}/text", "--batch-size", "-1", "--out", "{w}/t2"], 2,
     "--batch-size must be at least 1"),
    ("train negative steps", ["train", "{w}/text", "--max-steps", "-3", "--out", "{w}/t3"], 2,
     "--max-steps must not be negative"),
    ("train context over the data",
     ["train", "{w}/run/data", "--preset", "tiny", "--context-len", "100000", "--out", "{w}/t4"],
     2, "fewer than one window"),
    ("train config unknown key", ["train", "{w}/text", "--config", "{w}/unknown.toml"], 2,
     "unknown setting 'bogus_setting'"),
    ("train config wrong type", ["train", "{w}/text", "--config", "{w}/wrong_type.toml"], 2,
     "--lr must be a number"),
    ("resume not a run", ["train", "--resume", "{w}/text"], 1, "train_state.pt not found"),
    ("resume a finished run", ["train", "--resume", "{w}/run"], 2, "already finished"),
    ("resume moved data", ["train", "--resume", "{m:moved}"], 1, "its data is gone"),
    ("resume an unsafe pickle", ["train", "--resume", "{m:pickled}"], 1, "unsafe"),
    ("generate temperature < 0", ["generate", "{w}/run", "x", "--temperature", "-1"], 2,
     "--temperature must be 0"),
    ("generate top-p 0", ["generate", "{w}/run", "x", "--top-p", "0"], 2, "--top-p must be in"),
    ("generate top-p > 1", ["generate", "{w}/run", "x", "--top-p", "1.5"], 2, "--top-p must be"),
    ("generate top-k < 0", ["generate", "{w}/run", "x", "--top-k", "-1"], 2, "--top-k must be"),
    ("generate negative max tokens", ["generate", "{w}/run", "x", "--max-new-tokens", "-5"], 2,
     "--max-new-tokens must be at least 1"),
    ("chat temperature < 0", ["chat", "{w}/run", "--temperature", "-2"], 2, "--temperature"),
    ("generate truncated weights", ["generate", "{m:truncated}", "x"], 1, "file is corrupt"),
    ("eval truncated weights", ["eval", "{m:truncated}"], 1, "weights file is corrupt"),
    ("generate config not JSON", ["generate", "{m:notjson}", "x"], 1, "model config is corrupt"),
    ("generate another architecture", ["generate", "{m:gpt2}", "x"], 1, "not an slm model"),
    ("generate shapes disagree", ["generate", "{m:reshaped}", "x"], 1, "do not match"),
    ("generate foreign tokenizer", ["generate", "{m:foreign_tokenizer}", "x"], 1,
     "does not belong to these weights"),
    ("eval foreign tokenizer", ["eval", "{m:foreign_tokenizer}"], 1, "does not belong"),
    ("generate newer format", ["generate", "{m:newer}", "x"], 1, "format version 99"),
    ("eval empty text", ["eval", "{w}/run", "{w}/empty.txt"], 1, "empty"),
    ("generate missing model", ["generate", "{w}/nothere", "x"], 1, "model folder not found"),
]  # fmt: skip

VARIANTS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]
    ),
    "notjson": lambda f: (f / "config.json").write_text("{not json"),
    "gpt2": _edit_config("architecture", "gpt2"),
    "reshaped": _edit_config("d_model", 128),
    "foreign_tokenizer": _other_tokenizer,
    "newer": _edit_config("format_version", 99),
    "pickled": _pickled_state,
}


def _argv(world: Path, template: list[str]) -> list[str]:
    argv = []
    for part in template:
        if part.startswith("{m:"):
            name = part[3:-1]
            if name == "moved":
                part = _moved_run(world)
            else:
                part = _model_variant(world, name, VARIANTS[name])
        argv.append(part.replace("{w}", str(world)))
    return argv


def _moved_run(world: Path) -> str:
    run = world / "moved_run"
    if not run.exists():
        data = world / "data_to_move"
        shutil.copytree(world / "run" / "data", data)
        slm.train(str(data), out=run, preset="tiny", max_steps=6, stop_after=2, **FAST)
        shutil.move(str(data), str(world / "data_moved"))
    return str(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_one_clear_answer(world, argv, code, message):
    proc = subprocess.run(
        [sys.executable, "-m", "slm", *_argv(world, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("slm: error:") == 1 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""  # nothing that looks like a result
    assert not list(world.rglob("PWNED"))  # no pickle ever ran its payload
