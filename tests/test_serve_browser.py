"""`c4s serve` in a real headless browser: Debian's Chromium driven by Playwright.

Skipped (with the reason) when playwright or /usr/bin/chromium is missing; never
downloads a browser. Set C4S_UPDATE_SCREENSHOT=1 to rewrite docs/serve.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("C4S_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; its browser downloads are not used)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set C4S_CHROMIUM)")
    pytest.importorskip("uvicorn")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sync_playwright = _browser_or_skip()
    import uvicorn
    from test_serve import build_deployment

    from c4s_core.serve import build_server

    dep = build_deployment(tmp_path_factory.mktemp("browser"), num_identities=24, size=96, thumb=256)
    port = _free_port()
    app, url = build_server(dep["index"], dep["model"], host="127.0.0.1", port=port, top_k=12)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield {"url": url, "dep": dep, "sync_playwright": sync_playwright}
    finally:
        srv.should_exit = True
        thread.join(10)


def test_upload_a_sketch_see_candidates_open_one(server, tmp_path):
    dep = server["dep"]
    probe = dep["sketches"][5]
    with server["sync_playwright"]() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server["url"])
            # state is visible: model, index size, device
            page.wait_for_function("document.getElementById('st-index').textContent.includes('24 identities')")
            assert "tiny" in page.text_content("#st-model")
            assert "cpu" in page.text_content("#st-device")

            page.set_input_files("#file", str(probe))
            page.wait_for_selector("#grid li.card >> nth=11", timeout=15_000)
            cards = page.locator("#grid li.card")
            assert cards.count() == 12
            ids = [cards.nth(i).get_attribute("data-identity") for i in range(12)]
            assert len(set(ids)) == 12 and set(ids) <= set(dep["ids"])
            ranks = [cards.nth(i).locator(".rank").text_content() for i in range(12)]
            assert ranks == [f"#{i}" for i in range(1, 13)]
            scores = [float(cards.nth(i).locator(".score").text_content().split()[-1]) for i in range(12)]
            assert scores == sorted(scores, reverse=True)
            # the aligned crop and every candidate image are shown (decoded, not broken)
            page.wait_for_function("document.getElementById('aligned-img').naturalWidth === 32")
            page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
            assert "identities in" in page.text_content("#timing")
            shot = DOCS / "serve.png" if os.environ.get("C4S_UPDATE_SCREENSHOT") == "1" else tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # open the second candidate: sketch and mugshot side by side, full size
            cards.nth(1).click()
            page.wait_for_selector("#detail[open]")
            assert ids[1] in page.text_content("#d-title")
            page.wait_for_function("document.getElementById('d-mug').naturalWidth === 96"
                                   " && document.getElementById('d-sketch').naturalWidth === 96")
            assert page.locator("#d-gen").is_hidden()  # no --generator
            page.screenshot(path=str(tmp_path / "serve-detail.png"))
            page.click("#d-close")
            assert page.locator("#detail[open]").count() == 0

            # a non-image shows the server's message and leaves the page usable
            bad = tmp_path / "notes.txt"
            bad.write_text("not an image")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#msg.error")
            assert "not an image" in page.text_content("#msg")
            page.set_input_files("#file", str(probe))
            page.wait_for_selector("#grid li.card >> nth=11")
            assert not [e for e in errors if "415" not in e], errors
        finally:
            browser.close()
