"""Consent in a real browser: headless Chromium on the sandbox's consent pages.

The one place a person is in the loop. The command prints the URL, Chromium (Debian's
``chromium`` and ``chromium-driver``, installed by ``.ci/run``) loads the consent page,
the test presses Share or Cancel, the command's local callback server answers, and the
command exits with the documented code. A screenshot of each page the user sees is kept
under the test's ``artifacts`` directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from privateshare.cli import ExitCode
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import write_sandbox_config

from ..helpers import cli, consent_command, free_port

if TYPE_CHECKING:  # selenium is imported by the tests that drive a browser, not at collection
    from selenium import webdriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        reason = "headless Chromium is not installed: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=900,700")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """``tmp_path/artifacts``, or ``$PRIVATESHARE_TEST_ARTIFACTS/<test>`` to keep them (CI)."""
    keep = os.environ.get("PRIVATESHARE_TEST_ARTIFACTS")
    folder = Path(keep) / request.node.name if keep else tmp_path / "artifacts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def in_browser(
    driver: webdriver.Chrome, artifacts: Path, *args: str, press: str, name: str
) -> subprocess.CompletedProcess[str]:
    """Run a consent command; the browser opens its URL and the test presses ``press``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    def answer(url: str) -> None:
        driver.get(url)
        button = WebDriverWait(driver, 60).until(
            expected_conditions.element_to_be_clickable((By.ID, press))
        )
        driver.save_screenshot(str(artifacts / f"{name}-1-consent.png"))
        button.click()
        WebDriverWait(driver, 60).until(lambda d: "/callback" in d.current_url)
        driver.save_screenshot(str(artifacts / f"{name}-2-callback.png"))

    return consent_command(*args, answer=answer, timeout=120)


@pytest.fixture
def setup(privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path) -> tuple[Sandbox, str]:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = privateshare_sandbox(partial=True, redirect_uris=(redirect,), auto_consent=False)
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    return sandbox, str(config)


def test_share_in_chromium_then_reauthorize_the_partial_account(
    browser: webdriver.Chrome, artifacts: Path, setup: tuple[Sandbox, str]
) -> None:
    _sandbox, c = setup
    shared = in_browser(
        browser, artifacts, "authorize", "-c", c, "--user", "eve", press="share", name="authorize"
    )
    assert shared.returncode == ExitCode.OK, shared.stderr
    assert "Consent saved for user eve" in shared.stderr
    assert "You can close this window" in browser.page_source
    summary = json.loads(cli("pull", "-c", c, "--user", "eve", "--json").stdout)[0]
    assert summary["final_state"] == "partial"
    (account,) = summary["reauthorize_urls"]
    fixed = in_browser(
        browser,
        artifacts,
        "reauthorize",
        "-c",
        c,
        "--user",
        "eve",
        "--account",
        account,
        press="share",
        name="reauthorize",
    )
    assert fixed.returncode == ExitCode.OK, fixed.stderr
    after = json.loads(cli("pull", "-c", c, "--user", "eve", "--json").stdout)[0]
    assert after["ok"] and after["final_state"] == "completed"
    shots = sorted(p.name for p in artifacts.iterdir())
    assert shots == [
        "authorize-1-consent.png",
        "authorize-2-callback.png",
        "reauthorize-1-consent.png",
        "reauthorize-2-callback.png",
    ]
    assert all((artifacts / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in shots)


def test_cancel_in_chromium_exits_3(
    browser: webdriver.Chrome, artifacts: Path, setup: tuple[Sandbox, str]
) -> None:
    _sandbox, c = setup
    cancelled = in_browser(
        browser, artifacts, "authorize", "-c", c, "--user", "fay", press="cancel", name="cancel"
    )
    assert cancelled.returncode == ExitCode.AUTHORIZATION, cancelled.stderr
    assert "USER_CANCEL" in cancelled.stderr
    assert cli("users", "-c", c).stdout == ""
    assert (artifacts / "cancel-1-consent.png").stat().st_size > 0
    assert (artifacts / "cancel-2-callback.png").stat().st_size > 0
