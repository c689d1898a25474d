"""Take the README's screenshot of the playground: `docs/playground.png`.

Serves RUN_DIR on a loopback port, opens the page in Debian's chromium (through playwright,
as `tests/test_playground.py` does), types a prompt, generates, and saves the page once the
text has streamed in:

    python tools/playground_screenshot.py runs/NAME [--out docs/playground.png]
"""

from __future__ import annotations

import argparse
import sys

from playwright.sync_api import sync_playwright

import slm
from slm.serve.app import create_app, serve_in_background

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="RUN_DIR")
    parser.add_argument("--out", default="docs/playground.png")
    parser.add_argument("--prompt", default="ROMEO:\n")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with serve_in_background(create_app(slm.load(args.model))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url)
        page.wait_for_selector("#card dd")
        page.fill("#prompt", args.prompt)
        page.fill("#max_tokens", "120")
        page.fill("#temperature", "0.8")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        page.screenshot(path=args.out)
        browser.close()
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
