"""`slm generate` and `slm chat` through `main([...])`: stdout, stderr and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from slm import checkpoint
from slm.api import load
from slm.cli.main import main
from slm.errors import EXIT_FAILURE, EXIT_USAGE
from slm.tokenizer.bpe import Tokenizer

TEXT = "the cat sat on the mat. héllo wörld, naïve café; 日本語 😀!\n\n" * 30


@pytest.fixture(scope="module")
def run_dir(make_model_dir):
    return make_model_dir(TEXT)


def texts(out: str) -> list[str]:
    return [json.loads(line)["text"] for line in out.splitlines()]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_generate_streams_the_continuation_to_stdout(run_dir, capsys):
    code, out, err = run(capsys, "generate", run_dir, "the cat", "--max-new-tokens", "20")
    assert code == 0 and err == ""
    assert out.endswith("\n") and len(out) > 1


def test_json_gives_one_object_per_sample(run_dir, capsys):
    code, out, err = run(
        capsys, "generate", run_dir, "the cat", "--json", "--num-samples", "3",
        "--max-new-tokens", "12", "--seed", "1",
    )  # fmt: skip
    assert code == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2]
    tokenizer = Tokenizer.from_file(run_dir / checkpoint.TOKENIZER_FILE)
    for r in records:
        assert set(r) >= {
            "text",
            "prompt_tokens",
            "new_tokens",
            "finish_reason",
            "tokens_per_second",
        }
        assert r["prompt_tokens"] == len(tokenizer.encode("the cat"))
        assert 1 <= r["new_tokens"] <= 12
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["new_tokens"] == 12)
        assert r["tokens_per_second"] > 0
    assert len({r["text"] for r in records}) == 3


def test_a_seed_reproduces_and_temperature_zero_is_greedy(run_dir, capsys):
    args = ["generate", run_dir, "héllo", "--max-new-tokens", "15", "--json"]
    outputs = [json.loads(run(capsys, *args, "--seed", "5")[1]) for _ in range(2)]
    assert outputs[0]["text"] == outputs[1]["text"]
    texts = [json.loads(run(capsys, *args, "--temperature", "0")[1])["text"] for _ in range(2)]
    assert texts[0] == texts[1]


def test_min_p_and_repetition_penalty_reach_the_sampler(run_dir, capsys):
    base = ["generate", run_dir, "the cat", "--max-new-tokens", "12", "--json", "--seed", "3"]
    greedy = texts(run(capsys, *base, "--temperature", "0")[1])
    sampled = texts(run(capsys, *base)[1])
    only_the_top = texts(run(capsys, *base, "--min-p", "1")[1])  # p >= 1 x p(most likely)
    assert sampled != greedy and only_the_top == greedy
    flags = ["--temperature", "0", "--repetition-penalty", "2"]
    penalized = texts(run(capsys, *base, *flags)[1])
    model = load(run_dir, device="cpu")
    options = {"max_new_tokens": 12, "temperature": 0}
    assert penalized == [model.generate("the cat", repetition_penalty=2.0, **options)]
    assert penalized != greedy  # greedy text of random weights repeats itself


def test_stop_strings_understand_escapes_and_are_not_printed(run_dir, capsys):
    base = ["generate", run_dir, "the", "--json", "--temperature", "0", "--ignore-eot"]
    full = json.loads(run(capsys, *base, "--max-new-tokens", "40")[1])["text"]
    stop = full[10:12]
    code, out, _ = run(capsys, *base, "--max-new-tokens", "40", "--stop", stop.replace("\n", "\\n"))
    record = json.loads(out)
    assert code == 0
    assert record["text"] == full[: full.find(stop)] and record["finish_reason"] == "stop"


def test_prompt_from_a_file_or_stdin_equals_the_argument(run_dir, capsys, monkeypatch, tmp_path):
    args = ["--max-new-tokens", "10", "--seed", "2", "--json"]
    prompt = "naïve café 😀"
    from_arg = texts(run(capsys, "generate", run_dir, prompt, *args)[1])
    path = tmp_path / "prompt.txt"
    path.write_text(prompt, encoding="utf-8")
    from_file = texts(run(capsys, "generate", run_dir, "--prompt-file", path, *args)[1])
    monkeypatch.setattr("sys.stdin", io.StringIO(prompt))
    from_stdin = texts(run(capsys, "generate", run_dir, "-", *args)[1])
    assert from_arg == from_file == from_stdin  # the texts: timings differ


def test_a_prompt_that_is_not_utf8_is_replaced_with_a_warning(run_dir, capsys, monkeypatch):
    args = ["--max-new-tokens", "10", "--seed", "2", "--json"]
    # As a C-locale stdin reads: the two bad bytes arrive as surrogates in the text layer.
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe abc"), "utf-8", errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, err = run(capsys, "generate", run_dir, "-", *args)
    assert code == 0
    assert "warning: 2 undecodable bytes replaced in the prompt" in err
    assert texts(out) == texts(run(capsys, "generate", run_dir, "\ufffd\ufffd abc", *args)[1])
    # The same bytes as an argument (surrogateescape-decoded argv) reach the tokenizer as is.
    code, out, _ = run(capsys, "generate", run_dir, "\udcff\udcfe abc", *args)
    assert code == 0 and len(texts(out)) == 1


def test_several_samples_stream_one_after_another(run_dir, capsys):
    code, out, _ = run(
        capsys, "generate", run_dir, "the", "--num-samples", "2", "--max-new-tokens", "8"
    )
    assert code == 0
    assert out.index("--- sample 1/2 ---") < out.index("--- sample 2/2 ---")


def test_stats_go_to_stderr(run_dir, capsys):
    code, out, err = run(capsys, "generate", run_dir, "the", "--max-new-tokens", "5", "--stats")
    assert code == 0 and "tokens/s" in err and "tokens/s" not in out


def test_no_cache_gives_the_same_greedy_text(run_dir, capsys):
    args = ["generate", run_dir, "the", "--temperature", "0", "--max-new-tokens", "40", "--json"]
    cached = json.loads(run(capsys, *args)[1])["text"]
    assert json.loads(run(capsys, *args, "--no-cache")[1])["text"] == cached


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "-2"], "--top-k"),
        (["--num-samples", "0"], "--num-samples"),
        (["--threads", "-1"], "--threads"),
        (["--prompt-file", "p.txt"], "not both"),
    ],
)
def test_bad_options_are_usage_errors_on_one_line(run_dir, capsys, flags, words):
    code, out, err = run(capsys, "generate", run_dir, "prompt", *flags)
    assert code == EXIT_USAGE and out == ""
    assert words in err and err.count("\n") <= 2  # the error, and perhaps its hint


def test_a_missing_or_corrupt_model_is_a_failure_on_one_line(run_dir, capsys, tmp_path):
    code, out, err = run(capsys, "generate", tmp_path / "missing", "x")
    assert code == EXIT_FAILURE and out == "" and "not found" in err
    for path in run_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / checkpoint.CONFIG_FILE).write_text("{oops", encoding="utf-8")
    code, out, err = run(capsys, "generate", tmp_path, "x")
    assert code == EXIT_FAILURE and "corrupt" in err and "config.json" in err


def test_a_missing_prompt_file_is_a_failure(run_dir, capsys, tmp_path):
    code, _, err = run(capsys, "generate", run_dir, "--prompt-file", tmp_path / "none.txt")
    assert code == EXIT_FAILURE and "prompt file not found" in err


def test_chat_and_generate_i_run_the_prompt_loop(run_dir, capsys, monkeypatch):
    lines = iter(["/temp 0", "the cat", "/max 5", "héllo"])

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code, out, _ = run(capsys, "chat", run_dir, "--max-new-tokens", "10")
    assert code == 0
    assert "temperature = 0.0" in out and "max_new_tokens = 5" in out
    # The replies were printed, greedy after /temp 0, and 5 tokens long after /max 5.
    model = load(run_dir, device="cpu")
    first = model.generate("the cat", max_new_tokens=10, temperature=0)
    second = model.generate("héllo", max_new_tokens=5, temperature=0)
    assert first.strip() and second.strip()
    assert "max_new_tokens = 5\n" + second in out
    assert "temperature = 0.0\n" + first in out
    lines = iter(["/quit"])
    code, _, _ = run(capsys, "generate", run_dir, "-i")
    assert code == 0
    code, _, err = run(capsys, "generate", run_dir, "a prompt", "-i")
    assert code == EXIT_USAGE and "-i" in err


def test_building_the_generate_flags_does_not_import_torch():
    code = "import sys, slm.cli.main; slm.cli.main.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
