"""Take docs/dashboard.png: the dashboard against ``aigw demo`` under some traffic.

    .venv/bin/python scripts/dashboard_screenshot.py [--seconds 60] [--out docs/dashboard.png]

Starts ``aigw demo`` on a free 127.0.0.1 port (admin key from the environment), sends a
bounded amount of streamed traffic to it (``--workers`` concurrent clients, stopping after
``--seconds``), drains one deployment half-way, and near the end, while the traffic still
flows, opens the dashboard in Debian's headless chromium (Selenium with /usr/bin/chromedriver)
and saves a screenshot. Everything it starts it stops, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "screenshot-admin"
MODEL = "llama-3-8b"
WORDS = "the quick brown fox jumps over a lazy dog while GPUs hum in the rack".split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def traffic(url: str, seconds: float, workers: int, out: Path) -> int:
    """Streamed chat requests from ``workers`` clients until ``seconds`` have passed; one
    deployment drained half-way; the screenshot taken at 90% of the time."""
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 600)))
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": rng.randint(16, 256),
                "stream": True,
            }
            try:
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                    async for _ in reply.aiter_bytes():
                        pass
            except httpx.HTTPError:
                pass
            sent += 1

    async def drain_then_shoot(http: httpx.AsyncClient) -> None:
        await asyncio.sleep(seconds / 2)
        await http.post(
            f"{url}/admin/deployments/gpu-l4/drain",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            json={},
        )
        await asyncio.sleep(seconds * 0.4)
        await asyncio.to_thread(screenshot, url, out)  # selenium blocks: not on the loop

    limits = httpx.Limits(max_connections=workers + 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(drain_then_shoot(http), *(client(http) for _ in range(workers)))
    return sent


def screenshot(url: str, out: Path) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{url}/dashboard")
        driver.find_element(By.ID, "key").send_keys(ADMIN_KEY)
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        WebDriverWait(driver, 15).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-deployment]")) == 3
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 20)
        time.sleep(0.5)  # a redraw after the resize
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "AIGW_ADMIN_KEY": ADMIN_KEY}
    demo = subprocess.Popen(
        [sys.executable, "-m", "aigw", "demo", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or demo.poll() is not None:
                print("aigw demo did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        sent = asyncio.run(traffic(url, args.seconds, args.workers, args.out))
        print(f"{sent} requests sent; saved {args.out}")
        return 0
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGINT)
            try:
                demo.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(demo.pid, signal.SIGKILL)
                demo.wait()


if __name__ == "__main__":
    sys.exit(main())
