"""The page at / in a real headless browser (Debian's chromium driven by Playwright): type a passage
and a question, press Ask, read the highlighted answer off the page; a screenshot is kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_testing import running

from bertrt.serve import create_app
from bertrt.tasks.qa import answer_question

CHROMIUM = os.environ.get("BERTRT_CHROMIUM", "/usr/bin/chromium")
# The network is closed: no browser download, nothing fetched by the browser itself.
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

PASSAGE = ("The Amazon rainforest covers much of the Amazon basin of South America. The basin spans nine "
           "nations, and the majority of the forest is contained within Brazil, with 60% of the rainforest.")
QUESTIONS = ["Which country holds most of the forest?", "How many nations does the basin span?"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def test_ask_a_question_and_see_the_answer_highlighted(browser, served, tmp_path):
    expected = [answer_question(served.runner, served.tokenizer, q, PASSAGE).text for q in QUESTIONS]
    outside: list[str] = []
    with running(create_app(served)) as client:
        base = str(client.base_url)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
        page.goto(base + "/")
        page.fill("#context", PASSAGE)
        for question in QUESTIONS:
            page.fill("#question", question)
            page.click("#ask")
            page.wait_for_function("q => document.querySelector('#history li .q')?.textContent === q",
                                   arg=question, timeout=30_000)
        highlighted = page.text_content("mark#answer-span")
        answer = page.text_content("#answer")
        score = float(page.text_content("#score"))
        latency = page.text_content("#latency")
        history = page.locator("#history li .q").all_text_contents()
        passage = page.text_content("#passage")
        shot = tmp_path / "serve_page.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    # The last answer, highlighted inside the passage as it was typed.
    assert highlighted == answer == expected[-1] and passage == PASSAGE
    assert latency.endswith(" ms") and score == pytest.approx(
        answer_question(served.runner, served.tokenizer, QUESTIONS[-1], PASSAGE).score, abs=0.01)
    assert history == QUESTIONS[::-1]  # newest first
    assert not outside, f"the page fetched from elsewhere: {outside}"
