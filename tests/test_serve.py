"""slm serve: OpenAI's API over a real server (uvicorn on loopback), driven by the official
`openai` client; the engine's counters show batching and cancellation."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx")

import slm  # noqa: E402
from slm.chat_template import CHATML, render, transcript, write_template  # noqa: E402
from slm.cli.main import main  # noqa: E402
from slm.serve.app import Limits, create_app, serve_in_background  # noqa: E402
from slm.serve.engine import wait_idle  # noqa: E402

KEY = "test-key"


@pytest.fixture(scope="module")
def model_dir(make_model_dir, make_corpus_text) -> Path:
    return make_model_dir(make_corpus_text(3000), context_len=32)


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> slm.api.LoadedModel:
    return slm.load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(loaded) -> Iterator[tuple[str, object]]:
    """(base URL, app) of a server on a free loopback port, for the whole module."""
    app = create_app(loaded, limits=Limits(max_body_bytes=20_000), max_batch=16)
    with serve_in_background(app) as url:
        yield url, app


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


@pytest.fixture()
def engine(server):
    return server[1].state.engine


def name(model_dir: Path) -> str:
    return model_dir.name


# --------------------------------------------------------------------------- what it answers


def test_models_lists_the_one_model(client, model_dir) -> None:
    assert [m.id for m in client.models.list().data] == [name(model_dir)]


def test_greedy_completion_equals_slm_generate(client, loaded, model_dir) -> None:
    # The oracle: the server's batched decoding gives what `slm.load(dir).generate` gives.
    # 50 tokens run past the 32-token context, so the sliding window is checked too.
    for prompt in ("The king", "Sweet lady, good night"):
        expected = loaded.generate(prompt, max_new_tokens=50, temperature=0)
        reply = client.completions.create(
            model=name(model_dir), prompt=prompt, max_tokens=50, temperature=0
        )
        assert reply.choices[0].text == expected
        assert reply.object == "text_completion"
        prompt_tokens = len(loaded.tokenizer.encode(prompt))
        assert reply.usage.prompt_tokens == prompt_tokens
        assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens


def test_a_seed_reproduces_and_matches_slm_generate(client, loaded) -> None:
    options = dict(prompt="Love", max_tokens=20, temperature=1.0, seed=7)
    first = client.completions.create(model=None, **options).choices[0].text  # type: ignore[arg-type]
    again = client.completions.create(model=None, **options).choices[0].text  # type: ignore[arg-type]
    other = client.completions.create(model=None, **{**options, "seed": 8}).choices[0].text  # type: ignore[arg-type]
    assert first == again != other
    # OpenAI's defaults are no top-k and no top-p; slm.generate's are 50 and 0.95.
    alone = loaded.generate("Love", max_new_tokens=20, temperature=1.0, seed=7, top_k=0, top_p=1)
    assert first == alone


def test_streaming_gives_the_same_text_then_usage_and_done(client, server, loaded) -> None:
    expected = loaded.generate("The queen", max_new_tokens=30, temperature=0)
    chunks = list(
        client.completions.create(
            model=None,  # type: ignore[arg-type]
            prompt="The queen",
            max_tokens=30,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 30
    assert all(c.usage is None for c in chunks[:-1])
    # The raw stream: server-sent events ending in [DONE].
    body = {"prompt": "x", "max_tokens": 3, "stream": True}
    raw = httpx.post(f"{server[0]}/v1/completions", json=body).text
    assert raw.endswith("data: [DONE]\n\n")
    assert all(event.startswith("data: ") for event in raw.strip().split("\n\n"))


def test_n_samples_and_stop(client, loaded) -> None:
    reply = client.completions.create(
        model=None,  # type: ignore[arg-type]
        prompt="Good",
        max_tokens=12,
        n=3,
        seed=1,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 36
    assert len({c.text for c in reply.choices}) > 1
    # stop: cut the greedy continuation at a piece of itself
    full = loaded.generate("The king", max_new_tokens=40, temperature=0)
    stop = full[10:13]
    cut = client.completions.create(
        model=None,  # type: ignore[arg-type]
        prompt="The king",
        max_tokens=40,
        temperature=0,
        stop=[stop],
    ).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_chat_uses_a_transcript_for_a_base_model(client, loaded) -> None:
    messages = [{"role": "system", "content": "Be"}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(
        model=None,  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    prompt = transcript(messages)
    assert reply.usage.prompt_tokens == len(loaded.tokenizer.encode(prompt))
    assert reply.choices[0].message.content == loaded.generate(
        prompt, max_new_tokens=8, temperature=0, stop=("\nUser:",)
    )
    deltas = list(
        client.chat.completions.create(
            model=None,  # type: ignore[arg-type]
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert deltas[0].choices[0].delta.role == "assistant"
    text = "".join(d.choices[0].delta.content or "" for d in deltas if d.choices)
    assert text == reply.choices[0].message.content
    assert deltas[-1].choices == [] and deltas[-1].usage.prompt_tokens == reply.usage.prompt_tokens


def test_chat_uses_the_models_template(model_dir, tmp_path) -> None:
    from fastapi.testclient import TestClient

    folder = tmp_path / "chat"
    shutil.copytree(model_dir, folder)
    write_template(folder, CHATML)
    chat_model = slm.load(folder, device="cpu")
    messages = [{"role": "user", "content": "Hello"}]
    with TestClient(create_app(chat_model)) as http:
        body = {"messages": messages, "max_tokens": 4, "temperature": 0}
        reply = http.post("/v1/chat/completions", json=body)
        card = http.get("/card").json()
    expected = chat_model.chat_prompt(messages, max_new_tokens=4)  # <|endoftext|> + template
    assert expected.endswith(render(CHATML, messages, add_generation_prompt=True))
    assert reply.status_code == 200
    tokens = len(chat_model.tokenizer.encode(expected))  # cropped to the 32-token context
    assert reply.json()["usage"]["prompt_tokens"] == min(tokens, 32)
    content = reply.json()["choices"][0]["message"]["content"]
    assert content.strip() == chat_model.chat(messages, max_new_tokens=4, temperature=0)
    assert card["chat"] is True


def test_health_and_the_card(server, model_dir) -> None:
    health = httpx.get(f"{server[0]}/health").json()
    assert health["status"] == "ok"
    card = httpx.get(f"{server[0]}/card").json()
    assert card["name"] == name(model_dir) and card["parameters"] > 0


# --------------------------------------------------------------------------- errors and limits


def error_of(exc: openai.APIStatusError) -> dict:
    return exc.response.json()["error"]


@pytest.mark.parametrize(
    "options,error,param",
    [
        ({"max_tokens": 100_000}, openai.BadRequestError, "max_tokens"),
        ({"n": 99}, openai.BadRequestError, "n"),
        ({"temperature": -1}, openai.UnprocessableEntityError, "temperature"),
        ({"top_p": 0}, openai.UnprocessableEntityError, "top_p"),
        ({"extra_body": {"top_k": -3}}, openai.UnprocessableEntityError, "top_k"),
        ({"stop": ["", "x"]}, openai.BadRequestError, "stop"),
        ({"logprobs": 2}, openai.BadRequestError, "logprobs"),
        ({"model": "gpt-4"}, openai.NotFoundError, "model"),
    ],
)
def test_bad_requests_get_openai_error_bodies(client, options, error, param) -> None:
    with pytest.raises(error) as caught:
        client.completions.create(**{"model": None, "prompt": "x", **options})
    body = error_of(caught.value)
    assert body["param"] == param
    assert body["message"] and body["type"]
    assert "Traceback" not in caught.value.response.text


def test_malformed_and_oversized_bodies(server) -> None:
    url = f"{server[0]}/v1/completions"
    for content, status in [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"prompt": ["a", 3]}', 422),
        (json.dumps({"prompt": "x" * 30_000}).encode(), 413),
    ]:
        reply = httpx.post(url, content=content, headers={"content-type": "application/json"})
        assert reply.status_code == status, content[:20]
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    chat = httpx.post(f"{server[0]}/v1/chat/completions", json={"messages": [{"role": "x"}]})
    assert chat.status_code == 422


def test_an_api_key_is_required_when_set(loaded) -> None:
    with serve_in_background(create_app(loaded, api_key=KEY)) as url:
        anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            anonymous.completions.create(model=None, prompt="x", max_tokens=2)  # type: ignore[arg-type]
        assert error_of(caught.value)["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/card").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200  # liveness needs no key
        keyed = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert keyed.completions.create(model=None, prompt="x", max_tokens=2).usage  # type: ignore[arg-type]


# --------------------------------------------------------------------------- concurrency


def long_request(**extra) -> dict:
    """A generation that would run ~4,000 tokens (seconds) unless stopped."""
    return {"prompt": "The", "max_tokens": 4000, "extra_body": {"ignore_eos": True}, **extra}


def test_a_client_that_leaves_stops_its_generation(client, engine) -> None:
    assert wait_idle(engine)
    cancelled, tokens = engine.stats.cancelled, engine.stats.tokens
    stream = client.completions.create(model=None, stream=True, **long_request())  # type: ignore[arg-type]
    next(iter(stream))
    assert engine.active == 1
    stream.close()  # the client goes away mid-stream
    assert wait_idle(engine, timeout_s=5)
    assert engine.stats.cancelled == cancelled + 1
    assert engine.stats.tokens - tokens < 4000
    # Without streaming too: the server notices the closed connection while it waits.
    quick = openai.OpenAI(base_url=client.base_url, api_key="x", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        quick.completions.create(model=None, **long_request())  # type: ignore[arg-type]
    assert wait_idle(engine, timeout_s=5)
    assert engine.stats.cancelled == cancelled + 2


def test_concurrent_requests_are_all_answered_in_one_batch(client, engine, server) -> None:
    assert wait_idle(engine)
    engine.stats.peak_requests = 0

    def ask(i: int) -> int:
        reply = client.completions.create(
            model=None,  # type: ignore[arg-type]
            prompt=f"Request {i}",
            max_tokens=60,
            extra_body={"ignore_eos": True},
        )
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        # While they decode, the event loop still answers at once.
        started = time.perf_counter()
        assert httpx.get(f"{server[0]}/health").status_code == 200
        health_s = time.perf_counter() - started
        answered = [f.result(timeout=30) for f in futures]
    assert answered == [60] * 8
    assert engine.stats.peak_requests >= 2  # decoded together, not one after another
    assert health_s < 1.0


# --------------------------------------------------------------------------- the command


def test_serve_a_missing_folder_is_one_line(tmp_path, capsys) -> None:
    code = main(["serve", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("slm: error:") and "Traceback" not in err


def test_serve_without_the_extra_names_it(model_dir, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    monkeypatch.delitem(sys.modules, "slm.serve.app")
    assert main(["serve", str(model_dir)]) == 1
    assert "pip install 'slm[serve]'" in capsys.readouterr().err


def test_serve_on_a_port_in_use_is_one_line(model_dir, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(["serve", str(model_dir), "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 1
    assert "slm: error: cannot listen on 127.0.0.1" in err and "Traceback" not in err


@pytest.mark.slow
def test_slm_serve_runs_and_stops_on_ctrl_c(model_dir) -> None:
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "slm", "serve", str(model_dir), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.2)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "a"})
        assert reply.json()["usage"]["completion_tokens"] >= 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) in (0, 130)
    finally:
        if process.poll() is None:
            process.kill()
    err = process.stderr.read() if process.stderr else ""
    assert f"http://127.0.0.1:{port}/" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_load_test_answers_every_request(model_dir) -> None:
    from slm.bench.serving import serving_suite

    result = serving_suite(model_dir, clients=3, requests_per_client=2, max_tokens=8)
    for phase in ("sequential", "concurrent"):
        r = result[phase]
        assert r["answered"] == r["sent"] == 6 and r["tokens"] == 48
        assert 0 < r["p50_s"] <= r["p95_s"]
    assert result["sequential"]["mean_rows_per_step"] == 1.0
    assert result["rows"][1]["what"].endswith("concurrent (3 clients)")
