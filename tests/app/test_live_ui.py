"""The /ui playground in a real browser: Debian's headless Chromium driven by Selenium.

Against the shared live server (real engine, Redis, API keys): type a question with the
keyboard, watch the turns stream in, check every turn's answer, the vote tally and the final
answer against the stored session, continue with "two more turns", and save a screenshot. The
browser comes from the test set-up (``chromium`` and ``chromium-driver``, Debian packages).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.processes import LiveServer
from tests.app.conftest import KEY_A

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.browser, pytest.mark.slow]

WAIT_S = 180


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("chromium/chromedriver missing: run scripts/install-deploy-tools.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--disable-gpu"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_status(driver, prefix: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, WAIT_S).until(
        lambda _: status.text.startswith(prefix) or "error" in status.get_attribute("class")
    )
    assert status.text.startswith(prefix), status.text
    return status.text


def cards(driver) -> list[dict]:
    from selenium.webdriver.common.by import By

    out = []
    for card in driver.find_elements(By.CSS_SELECTOR, "#turns .turn"):
        out.append(
            {
                "turn": int(card.get_attribute("data-turn")),
                "answer": card.find_element(By.CSS_SELECTOR, ".answer .value").text,
                "text": card.find_element(By.CSS_SELECTOR, ".text").text,
                "changed": "changed" in card.get_attribute("class"),
                "stats": card.find_element(By.CSS_SELECTOR, ".stats").text,
            }
        )
    return out


def stored(live: LiveServer, session_id: str) -> dict:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    return httpx.get(f"{live.url}/sessions/{session_id}", headers=headers, timeout=30).json()


def test_playground_solves_continues_and_shows_the_vote(
    browser, live: LiveServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    driver.get(f"{live.url}/ui")
    assert "RISE playground" in driver.title

    def fill(field: str, value: str) -> None:
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)

    fill("api_key", KEY_A)
    for field, value in {"max_turns": "3", "temperature": "0", "max_tokens": "12"}.items():
        fill(field, value)
    Select(driver.find_element(By.ID, "grader")).select_by_value("exact")
    question = driver.find_element(By.ID, "question")
    question.send_keys("What is 17 + 25?")
    question.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard shortcut submits
    wait_for_status(driver, "Done")

    session_id = driver.find_element(By.ID, "session-id").text
    session = stored(live, session_id)
    shown = cards(driver)
    assert [c["turn"] for c in shown] == [0, 1, 2] == [t["index"] for t in session["turns"]]
    for card, turn in zip(shown, session["turns"], strict=True):
        assert card["answer"] == (turn["answer"] if turn["answer"] is not None else "(none)")
        assert card["text"].strip() == turn["text"].strip()
        assert f"prompt {turn['prompt_tokens']} tok" in card["stats"]
    for before, after, card in zip(session["turns"], session["turns"][1:], shown[1:], strict=False):
        assert card["changed"] == (before["answer"] != after["answer"])
    final = driver.find_element(By.ID, "final").text
    assert final == (session["answer"] if session["answer"] is not None else "(no answer)")
    rows = driver.find_elements(By.CSS_SELECTOR, "#tally tr")[1:]
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    tally = {answer: int(count) for answer, count in cells}
    assert tally == session["vote"]["counts"]
    assert driver.find_element(By.ID, "json-link").get_attribute("href").endswith(session_id)

    driver.find_element(By.ID, "more").click()  # "two more turns" on the same session
    wait_for_status(driver, "Done: 2 turn(s)")
    assert [c["turn"] for c in cards(driver)] == [0, 1, 2, 3, 4]
    assert len(stored(live, session_id)["turns"]) == 5
    driver.find_element(By.ID, "show-json").click()
    shown_json = driver.find_element(By.ID, "json")
    WebDriverWait(driver, 30).until(lambda _: shown_json.text)  # the page fetches it
    assert session_id in shown_json.text
    assert driver.save_screenshot(str(tmp_path / "playground.png"))
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_playground_reports_errors_honestly(browser, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{live.url}/ui")
    key = driver.find_element(By.ID, "api_key")
    key.clear()
    key.send_keys("not-a-key")
    driver.find_element(By.ID, "question").send_keys("2 + 2?")
    driver.find_element(By.ID, "solve").click()
    status = wait_for_status(driver, "Not authorised (401)")
    assert "API key" in status
    assert driver.find_element(By.ID, "solve").is_enabled()  # ready for another try


def test_playground_picks_feedback_and_shows_it_between_the_turns(
    browser, live: LiveServer
) -> None:
    """The feedback selector lists what GET /feedback offers (the live server's verifiers
    included); each turn card shows its provider, verdict and the message the next turn got."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    driver.get(f"{live.url}/ui")
    key = driver.find_element(By.ID, "api_key")
    key.clear()
    key.send_keys(KEY_A)
    driver.execute_script("document.getElementById('api_key').dispatchEvent(new Event('change'))")
    select = Select(driver.find_element(By.ID, "feedback"))
    WebDriverWait(driver, 30).until(lambda _: len(select.options) > 3)
    offered = [option.get_attribute("value") for option in select.options]
    assert offered == ["fixed", "oracle", "calculator", "seven", "slow", "error", "garbage"]
    select.select_by_value("error")  # a verifier that fails: shown, and the solve goes on
    for field, value in {"max_turns": "2", "temperature": "0", "max_tokens": "8"}.items():
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.ID, "question").send_keys("What is 3 + 4?")
    driver.find_element(By.ID, "solve").click()
    wait_for_status(driver, "Done")
    session = stored(live, driver.find_element(By.ID, "session-id").text)
    boxes = driver.find_elements(By.CSS_SELECTOR, "#turns .turn .feedback")
    assert len(boxes) == 2 and all(box.is_displayed() for box in boxes)
    for box, turn in zip(boxes, session["turns"], strict=True):
        assert turn["feedback"]["provider"] == "error"
        assert "feedback · error" in box.text and "unknown" in box.text
        assert "verifier status" in box.text  # the failure, named
        assert turn["feedback"]["message"] in box.text
