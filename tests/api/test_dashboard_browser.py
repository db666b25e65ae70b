"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium) against
``aigw demo``: it asks for the admin key, says so when the key is wrong, shows the demo's three
deployments, and shows a drained one as draining.

Uses the system browser and driver (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``./dev
test`` installs Debian's ``chromium`` and ``chromium-driver``), never a downloaded one.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.procs import Processes, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ADMIN_KEY = "demo-admin-key"
DEMO_IDS = {"gpu-h100", "gpu-a100", "gpu-l4"}
WAIT_S = 15.0

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (./dev test installs them "
        "with apt-get when it can)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """``aigw demo`` with the admin key from the environment; its URL once it is ready."""
    port = free_port()
    procs = Processes(tmp_path)
    try:
        proc = procs.start(
            "demo",
            ["env", f"AIGW_ADMIN_KEY={ADMIN_KEY}", sys.executable, "-m", "aigw", "demo",
             "--port", str(port)],
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.alive, proc.log_tail()
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 20, "aigw demo to answer /readyz")
        yield url
    finally:
        procs.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, key: str) -> None:
    field = WebDriverWait(driver, WAIT_S).until(lambda d: _visible(d, "key"))
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def _visible(driver: Any, element_id: str) -> Any:
    element = driver.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


# Read in one script call: the page redraws every two seconds, so element handles go stale.
_CARDS = """
return Object.fromEntries([...document.querySelectorAll('[data-deployment]')].map((c) => [
  c.dataset.deployment,
  {state: c.dataset.state, requests: Number(c.dataset.requests),
   badge: c.querySelector('[data-role=state]').textContent,
   button: c.querySelector('button').textContent},
]));
"""


def cards(driver: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = driver.execute_script(_CARDS)
    return found


def click_button_of(driver: Any, deployment_id: str) -> None:
    driver.execute_script(
        "document.querySelector(`[data-deployment='${arguments[0]}'] button`).click()",
        deployment_id,
    )


def test_dashboard_shows_the_demo_fleet_and_a_drained_deployment(demo: str, browser: Any) -> None:
    browser.get(f"{demo}/dashboard")
    assert browser.title == "aigw dashboard"

    sign_in(browser, "not-the-key")
    message = WebDriverWait(browser, WAIT_S).until(lambda d: _visible(d, "message"))
    assert "401" in message.text and "refused" in message.text

    sign_in(browser, ADMIN_KEY)
    WebDriverWait(browser, WAIT_S).until(lambda d: set(cards(d)) == DEMO_IDS)
    assert {c["state"] for c in cards(browser).values()} == {"healthy"}
    assert not browser.find_element(By.ID, "message").is_displayed()
    models = browser.execute_script(
        "return document.querySelector(\"[data-model='llama-3-8b']\").textContent"
    )
    assert "ready" in models

    # Some traffic: the cards count it.
    for _ in range(3):
        httpx.post(
            f"{demo}/v1/chat/completions",
            json={"model": "llama-3-8b", "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 2},
            timeout=10,
        ).raise_for_status()  # fmt: skip
    WebDriverWait(browser, WAIT_S).until(
        lambda d: sum(c["requests"] for c in cards(d).values()) == 3
    )

    drained = httpx.post(
        f"{demo}/admin/deployments/gpu-a100/drain",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={},
    )
    assert drained.status_code == 200
    WebDriverWait(browser, WAIT_S).until(lambda d: cards(d)["gpu-a100"]["state"] == "draining")
    shown = cards(browser)
    assert shown["gpu-a100"]["badge"] == "draining" and shown["gpu-a100"]["button"] == "Undrain"
    assert shown["gpu-h100"]["state"] == shown["gpu-l4"]["state"] == "healthy"

    # The page's own button undrains it again (a POST with the key, as JSON).
    click_button_of(browser, "gpu-a100")
    WebDriverWait(browser, WAIT_S).until(lambda d: cards(d)["gpu-a100"]["state"] == "healthy")
    state = httpx.get(
        f"{demo}/admin/deployments", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).json()["data"]
    assert not any(d["draining"] for d in state)

    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("401" in m for m in severe), severe  # only the wrong key's refused fetch
