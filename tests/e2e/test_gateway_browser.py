"""The gateway's page in a real browser: Debian's Chromium driven by Playwright (both
installed by scripts/install-browser.sh; never a Playwright browser download).

A teacher process on the tiny model and an `opd-gateway` process, both with a bearer
token, on free ports. The page asks for the token once (a prompt) and keeps it for the
session; it submits a text; every token's colour and data attributes must equal the
API's surprise values, and the hover and click lists the API's top-K. A screenshot of
the page goes to docs/gateway-page.png (the README shows it). Last, the teacher is
stopped and the page must say so instead of hanging.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from processes import free_port, start_gateway, start_teacher, stop

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "docs" / "gateway-page.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "page-secret"
TEXT = "12+7=19. the teacher adds numbers and the student counts 3 4 5 6, héllo."
TOP_K = 4

# The page's colour scale (static/app.js, surpriseColour), written again here.
SURPRISE_SCALE = 8
LOW, HIGH = (255, 247, 214), (214, 39, 40)


def surprise_colour(surprise: float) -> str:
    t = min(max(surprise, 0) / SURPRISE_SCALE, 1)
    r, g, b = (math.floor(lo + (hi - lo) * t + 0.5) for lo, hi in zip(LOW, HIGH, strict=True))
    return f"rgb({r}, {g}, {b})"


class Stack:
    def __init__(self, teacher: subprocess.Popen[str], base: str) -> None:
        self.teacher = teacher
        self.base = base


@pytest.fixture(scope="module")
def stack(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN)
    teacher_port, gateway_port = free_port(), free_port()
    teacher = start_teacher(tiny_teacher_dir, teacher_port, "--auth-token-file", str(token_file))
    try:
        gateway = start_gateway(
            gateway_port,
            "--teacher",
            f"127.0.0.1:{teacher_port}",
            "--auth-token-file",
            str(token_file),
            "--timeout-s",
            "10",
        )
        try:
            yield Stack(teacher, f"http://127.0.0.1:{gateway_port}")
        finally:
            stop(gateway)
    finally:
        stop(teacher)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, stack: Stack) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(viewport={"width": 980, "height": 540})
    page = context.new_page()
    page.set_default_timeout(20_000)
    prompts: list[str] = []

    def answer(dialog: Any) -> None:
        prompts.append(dialog.message)
        dialog.accept(TOKEN)

    page.on("dialog", answer)
    page.goto(stack.base + "/")
    yield page, prompts
    context.close()


def _api(stack: Stack) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.base}/v1/support",
        json={"text": TEXT, "top_k": TOP_K},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _popup(page: Page) -> list[tuple[int, str]]:
    items = page.eval_on_selector_all(
        "#topk li", "els => els.map(e => [Number(e.dataset.id), e.dataset.token])"
    )
    return [(int(i), str(t)) for i, t in items]


def test_page_draws_the_apis_surprise_and_top_k(page: tuple[Page, list[str]], stack: Stack) -> None:
    page_, prompts = page
    page_.wait_for_selector('#teacher[data-state="ok"]')
    assert len(prompts) == 1, prompts  # the token was asked for once
    page_.fill("#text", TEXT)
    page_.fill("#k", str(TOP_K))
    page_.click("#score")
    page_.wait_for_selector('#status[data-state="ok"]')
    api = _api(stack)

    drawn = page_.eval_on_selector_all(
        ".tok",
        """els => els.map(e => ({
            index: Number(e.dataset.index), id: Number(e.dataset.id),
            surprise: e.dataset.surprise === undefined ? null : Number(e.dataset.surprise),
            logprob: e.dataset.logprob === undefined ? null : Number(e.dataset.logprob),
            rank: e.dataset.rank === undefined ? null : Number(e.dataset.rank),
            colour: getComputedStyle(e).backgroundColor}))""",
    )
    assert len(drawn) == len(api["tokens"])
    for shown, token in zip(drawn, api["tokens"], strict=True):
        assert shown["index"] == token["index"] and shown["id"] == token["id"]
        if token["predicted"]:
            assert shown["surprise"] == token["surprise"]
            assert shown["logprob"] == token["logprob"] and shown["rank"] == token["rank"]
            assert shown["colour"] == surprise_colour(token["surprise"]), token
        else:
            assert shown["surprise"] is None
            assert shown["colour"] == "rgba(0, 0, 0, 0)"
    assert page_.text_content("#tokens") == TEXT

    # Hover: each scored token's list is the API's top-K, in order.
    for token in api["tokens"]:
        page_.hover(f'.tok[data-index="{token["index"]}"]')
        page_.wait_for_selector(f'#topk[data-index="{token["index"]}"]', state="visible")
        top = token["top"]
        assert _popup(page_) == list(zip(top["ids"], top["tokens"], strict=True)), token["index"]

    # Click pins: the list stays while the mouse moves over other tokens.
    worst = api["summary"]["worst"][0]["index"]
    page_.click(f'.tok[data-index="{worst}"]')
    page_.hover('.tok[data-index="1"]')
    page_.hover("h1")
    assert page_.get_attribute("#topk", "data-index") == str(worst)
    assert page_.is_visible("#topk")
    top = api["tokens"][worst]["top"]
    assert _popup(page_) == list(zip(top["ids"], top["tokens"], strict=True))
    summary = page_.text_content("#summary") or ""
    assert f"{api['summary']['mean_surprise']:.3f}" in summary
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page_.screenshot(path=str(SCREENSHOT), full_page=False)
    assert 0 < SCREENSHOT.stat().st_size < 400_000

    page_.click("#show-json")
    raw = page_.text_content("#raw") or ""
    assert page_.is_visible("#raw") and '"surprise"' in raw

    page_.reload()  # the token is kept for the browser session: no second prompt
    page_.wait_for_selector('#teacher[data-state="ok"]')
    assert len(prompts) == 1


def test_page_says_the_teacher_is_down(page: tuple[Page, list[str]], stack: Stack) -> None:
    page_, _ = page
    stop(stack.teacher)
    page_.fill("#text", "is anyone there")
    page_.click("#score")
    page_.wait_for_selector('#status[data-state="error"]', timeout=30_000)
    assert "Teacher unavailable" in (page_.text_content("#status") or "")
    assert page_.is_enabled("#score")
