"""The static Kedro-Viz site (`kedro viz build`) opened in a real browser.

Headless Debian Chromium driven by Selenium through Debian's chromedriver, never a downloaded one
(an explicit Service path and SE_OFFLINE=true keep Selenium Manager out of it). The site is served
from 127.0.0.1 and every other host name fails to resolve, so the page renders offline.
Without Chromium the test fails and says how to install it; AOT_SKIP_BROWSER=1 skips it instead.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from aot.pipeline_registry import PIPELINE_ORDER
from aot.pipelines.selfplay.schedule import load_rounds

CHROMIUM = Path(os.environ.get("AOT_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("AOT_CHROMEDRIVER", "/usr/bin/chromedriver"))
PIPELINES = {"bootstrap_dataset", "sft", "selfplay", "evaluation"}
SELECTOR = '[data-test="kedro-pipeline-selector"]'
WAIT_S = 90


@pytest.fixture(scope="session")
def browser_binaries() -> tuple[Path, Path]:
    """Chromium and chromedriver, checked before the (slow) site build."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (
            f"{', '.join(missing)} not found: install Debian's Chromium with "
            "`apt-get install -y chromium chromium-driver` (.ci/run does), "
            "or set AOT_SKIP_BROWSER=1 to skip the browser test"
        )
        if os.environ.get("AOT_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def site_url(viz_build: Path) -> Iterator[str]:
    """The built site served by http.server on a free port of 127.0.0.1."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    handler = functools.partial(QuietHandler, directory=str(viz_build / "build"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def driver(
    browser_binaries: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebDriver]:
    chromium, chromedriver = browser_binaries
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        # offline: the page links Google Fonts; only 127.0.0.1 resolves
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    service = Service(str(chromedriver), log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        yield browser
    finally:
        browser.quit()


def _wait(driver: WebDriver, condition, what: str):  # type: ignore[no-untyped-def]
    try:
        # The flowchart re-renders while it lays out: an element can go stale between finding
        # it and reading it, which only means "not there yet".
        return WebDriverWait(
            driver,
            WAIT_S,
            poll_frequency=0.25,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(condition)
    except TimeoutException:
        text = driver.find_element(By.TAG_NAME, "body").text[:1500]
        pytest.fail(f"timed out after {WAIT_S}s waiting for {what}; the page shows:\n{text}")


def _displayed(driver: WebDriver, css: str) -> list:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


@pytest.mark.slow
def test_kedro_viz_shows_the_pipelines_and_the_selfplay_rounds(
    browser_binaries: tuple[Path, Path],  # first: fail fast, before the site is built
    driver: WebDriver,
    site_url: str,
    viz_build: Path,
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    rounds = [
        f"selfplay.{name}"
        for name in load_rounds(viz_build / "conf" / "base" / "selfplay_schedule.yml")
    ]
    screenshot = tmp_path / "viz_screenshot.png"
    driver.get(site_url)
    try:
        _wait(driver, lambda d: _displayed(d, f"{SELECTOR} button.dropdown__label"), "the app")
        for hint in _displayed(driver, ".feature-hints__close"):  # the first-visit tour
            hint.click()

        # the pipeline dropdown offers every registered pipeline
        driver.find_element(By.CSS_SELECTOR, f"{SELECTOR} button.dropdown__label").click()
        options = _wait(
            driver,
            lambda d: _displayed(d, f"{SELECTOR} .menu-option__content"),
            "the pipeline list",
        )
        offered = {o.get_attribute("title") for o in options}
        assert PIPELINES <= offered, f"pipelines offered: {sorted(offered)}"
        assert set(PIPELINE_ORDER) <= offered

        # choosing `selfplay` shows it, with one collapsible group per round
        next(o for o in options if o.get_attribute("title") == "selfplay").click()
        _wait(
            driver,
            lambda d: (
                d.find_element(By.CSS_SELECTOR, f"{SELECTOR} button.dropdown__label").text
                == "selfplay"
            ),
            "the selfplay pipeline to be selected",
        )
        assert "pid=selfplay" in driver.current_url
        group = _wait(
            driver,
            lambda d: _displayed(d, 'button[data-test="node-list-tree-item--row--selfplay"]'),
            "the selfplay group in the sidebar",
        )[0]
        group.find_element(By.XPATH, "./ancestor::li[1]").find_element(
            By.CSS_SELECTOR, ".MuiTreeItem-iconContainer"
        ).click()  # expands it in the sidebar and in the flowchart
        for name in rounds:
            _wait(
                driver,
                lambda d, name=name: _displayed(
                    d, f'button[data-test="node-list-tree-item--row--{name}"]'
                ),
                f"{name} in the sidebar",
            )
        drawn = _wait(
            driver,
            lambda d: (
                labels
                if set(rounds)
                <= (labels := {e.text for e in _displayed(d, "g.pipeline-node--modularPipeline")})
                else None
            ),
            "the round groups in the flowchart",
        )
        assert set(rounds) <= drawn
    finally:
        driver.save_screenshot(str(screenshot))
        shutil.copy(screenshot, artifacts_dir / "viz_screenshot.png")

    with Image.open(screenshot) as image:
        assert image.size[0] >= 1200 and image.size[1] >= 800
        colours = image.convert("RGB").resize((200, 125)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
