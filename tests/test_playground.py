"""The playground page in a real headless browser: Debian's chromium driven by playwright.

Skipped, with the reason shown, where playwright or a chromium binary is missing (CI
installs both; see .ci/run)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

import slm  # noqa: E402
from slm.serve.app import create_app, serve_in_background  # noqa: E402
from slm.serve.engine import wait_idle  # noqa: E402

# Playwright cannot download its own browsers here; Debian's chromium is launched instead.
# Without the background-networking flags it tries the network at start-up and the closed
# network refuses it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SLM_CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set SLM_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_generate_streams_and_stop_stops(browser, make_model_dir, make_corpus_text, tmp_path):
    model = slm.load(make_model_dir(make_corpus_text(3000), context_len=32), device="cpu")
    app = create_app(model)
    engine = app.state.engine
    with serve_in_background(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(url)
        page.wait_for_selector("#card dd")  # the model card arrived from /card
        assert "parameters" in page.inner_text("#card")
        page.fill("#prompt", "The king")
        # Greedy on this random model repeats itself and never ends the text: 4,000 tokens
        # take seconds, so Stop lands mid-generation.
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "4000")
        page.click("#generate")
        page.wait_for_function("document.querySelector('.completion').textContent.length > 20")
        assert page.is_enabled("#stop") and not page.is_enabled("#generate")
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        assert page.is_enabled("#generate")
        streamed = page.inner_text(".completion")
        assert 20 < len(streamed) < 4000
        assert wait_idle(engine, timeout_s=5)
        assert engine.stats.cancelled == 1  # Stop closed the stream; the server stopped too
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        page.close()


def test_chat_mode_talks_to_the_chat_endpoint(browser, make_model_dir, make_corpus_text):
    model = slm.load(make_model_dir(make_corpus_text(3000), context_len=32), device="cpu")
    with serve_in_background(create_app(model)) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#card dd")
        page.check("#chat")
        page.fill("#max_tokens", "5")
        page.fill("#prompt", "Hello")
        with page.expect_response("**/v1/chat/completions") as reply:
            page.click("#generate")
        assert reply.value.status == 200
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        assert "You: Hello" in page.inner_text("#output")
        assert page.input_value("#prompt") == ""  # ready for the next turn
        page.close()
