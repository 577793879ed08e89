"""Browser tests: the app started as the README starts it (``python -m app run``) and driven
in headless Chromium (Debian's package, through Playwright; no browser download).

The app gets its own var dir, a fixed secret key and a smaller demo network
(NOBAT_DEMO_OFFICES=2000 instead of 17,000: it loads and counts its seats in a few seconds,
and every province still has offices). SMS sign-in codes are read from the console
backend's outbox in the app's embedded Redis, as a phone would receive them.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
READY_TIMEOUT_S = 120
SMS_TIMEOUT_S = 20
OUTBOX = "nobat:sms:outbox"
# The offices' time zone. Tehran, as in production; another zone (NOBAT_E2E_TZ=America/Sao_Paulo,
# say) moves "now" into or out of office hours, to try the other branch of the staff test.
TZ_NAME = os.environ.get("NOBAT_E2E_TZ", "Asia/Tehran")
TZ = ZoneInfo(TZ_NAME)
SECRET_KEY = "e2e-secret-key-not-for-production-0123456789abcdef"
SCREENSHOTS = Path(os.environ.get("NOBAT_SCREENSHOTS_DIR") or ROOT / "docs" / "screenshots")

# Every page a test visits must pass these checks (see ``Site.check``).
A11Y_SCRIPT = r"""
() => {
  const problems = [];
  const html = document.documentElement;
  if (html.getAttribute("lang") !== "fa") problems.push("html lang is not fa");
  if (html.getAttribute("dir") !== "rtl") problems.push("html dir is not rtl");
  if (!document.title.trim()) problems.push("no title");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const label = el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`);
    if (!label || !label.textContent.trim()) problems.push(`no label for ${el.name || el.outerHTML.slice(0, 60)}`);
  }
  for (const el of document.querySelectorAll("button, a[href]")) {
    if (!el.textContent.trim() && !el.getAttribute("aria-label")) problems.push(`no text: ${el.outerHTML.slice(0, 60)}`);
  }
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")];
  if (!headings.length || headings[0].tagName !== "H1") problems.push("the first heading is not h1");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  let level = 0;
  for (const h of headings) {
    const n = Number(h.tagName[1]);
    if (n > level + 1) problems.push(`heading skips a level: ${h.tagName} ${h.textContent.trim()}`);
    level = n;
  }
  const skip = document.querySelector("a.skip-link");
  if (!skip || !document.querySelector(skip.getAttribute("href"))) problems.push("no working skip link");
  const seen = new Set();
  for (const el of document.querySelectorAll("[id]")) {
    if (seen.has(el.id)) problems.push(`duplicate id ${el.id}`);
    seen.add(el.id);
  }
  // Text contrast (WCAG AA): 4.5:1, or 3:1 for large text.
  const parse = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg, .visually-hidden, .skip-link, option")) continue;
    const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (!text || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    const bg = background(el);
    const fg = over(parse(style.color), bg);
    const [a, b] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) problems.push(`contrast ${ratio.toFixed(2)} for "${text.slice(0, 30)}"`);
  }
  return problems;
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The app as ``python -m app run`` starts it, on a free port with a var dir of its own."""

    def __init__(self, var_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "NOBAT_VAR_DIR": str(var_dir),
            # A smaller demo network than the national 17,000 offices: every province still has
            # offices and demo accounts, and the first start takes seconds instead of ~15.
            "NOBAT_DEMO_OFFICES": "2000",
            "NOBAT_SECRET_KEY": SECRET_KEY,
            # Tests must not depend on the calendar: no official holiday closes an office.
            "NOBAT_OFFICIAL_HOLIDAYS": "false",
            "NOBAT_SMS_BACKEND": "console",
            "NOBAT_PUBLIC_URL": self.url,
            "NOBAT_TZ": TZ_NAME,
        }
        for name in ("DATABASE_URL", "REDIS_URL", "RQ_REDIS_URL"):
            self.env.pop(name, None)
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self.redis_url: str | None = None
        self._redis_seen = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "run", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the app exited during start-up:\n" + "\n".join(self.log))
            try:
                with urllib.request.urlopen(self.url + "/health/ready", timeout=2) as response:
                    if response.status == 200 and self._redis_seen.wait(timeout=0):
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)  # polling the start-up, not waiting inside a test
        self.stop()
        raise RuntimeError(f"the app was not ready within {READY_TIMEOUT_S} s:\n" + "\n".join(self.log))

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            match = re.search(r"embedded redis-server on (redis://\S+)", line)
            if match and self.redis_url is None:
                self.redis_url = match[1]
                self._redis_seen.set()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def sms_code(self, mobile: str, *, after: set[str]) -> str:
        """The sign-in code last texted to ``mobile`` that is not in ``after`` (message ids seen before)."""
        assert self.redis_url
        digits = mobile[-10:]
        redis = Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + SMS_TIMEOUT_S
            while time.monotonic() < deadline:
                for raw in redis.lrange(OUTBOX, 0, 50):
                    message = json.loads(raw)
                    if message["id"] in after or not message["to"].endswith(digits):
                        continue
                    code = re.search(r"\(([0-9]{6})\)", message["body"])
                    if code:
                        return code[1]
                time.sleep(0.1)  # the RQ worker delivers within about a second
        finally:
            redis.close()
        raise AssertionError(f"no sign-in code reached {mobile} in {SMS_TIMEOUT_S} s")

    def outbox_ids(self) -> set[str]:
        assert self.redis_url
        redis = Redis.from_url(self.redis_url)
        try:
            return {json.loads(raw)["id"] for raw in redis.lrange(OUTBOX, 0, -1)}
        finally:
            redis.close()

    def staff_account(self, office_code: str) -> tuple[str, str]:
        """A staff account of the office: the demo one for the first office of a province,
        else one made with the CLI, as an operator would."""
        if office_code.endswith("0001"):
            return f"staff-{office_code}", f"demo-{office_code}-pass"
        username, password = f"e2e-{office_code}", "e2e-staff-password"
        subprocess.run(
            [sys.executable, "-m", "app", "staff", "create", "--username", username, "--office", office_code,
             "--password", password],
            cwd=ROOT, env=self.env, check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return username, password


class Site:
    """What the tests do on every page: check it, and photograph it for docs/screenshots."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url

    def check(self, page: Any) -> None:
        problems = page.evaluate(A11Y_SCRIPT)
        assert problems == [], f"{page.url}: {problems}"

    def shot(self, page: Any, name: str, *, full_page: bool = True) -> None:
        if os.environ.get("NOBAT_SCREENSHOTS") == "0":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # Fonts first: a screenshot taken before Vazirmatn arrives shows the fallback font.
        page.evaluate("document.fonts.ready.then(() => true)")
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    @staticmethod
    def today() -> dt.date:
        return dt.datetime.now(TZ).date()

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(TZ)


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/ensure-chromium installs it)")
    app = Server(tmp_path_factory.mktemp("nobat-e2e")).start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="package")
def site(server: Server) -> Site:
    return Site(server)


# Package-scoped, not session-scoped: the sync Playwright API keeps an event loop running
# while it is open, which the async tests of the other folders cannot share.
@pytest.fixture(scope="package")
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _context(browser: Any, server: Server, **options: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, locale="fa-IR", timezone_id=TZ_NAME, **options)
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def phone(browser: Any, server: Server) -> Iterator[Any]:
    """A phone-sized browser (citizens' pages are designed for phones first)."""
    yield from _context(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                        is_mobile=True, has_touch=True)  # fmt: skip


@pytest.fixture
def desk(browser: Any, server: Server) -> Iterator[Any]:
    """A desktop browser, as office staff, the guild and the regulator use."""
    yield from _context(browser, server, viewport={"width": 1280, "height": 800})


@pytest.fixture(scope="package")
def journey() -> dict[str, str]:
    """What one test leaves for the next: the citizen's booking, which the staff then check in."""
    return {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed browser test's report ends with what its pages showed and the app's last log
    lines: CI keeps no more than the report, and a page that did not come is explained there."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when != "call":
        return
    funcargs = getattr(item, "funcargs", {})
    for name in ("phone", "desk"):
        for page in funcargs[name].pages if name in funcargs else []:
            try:
                shown = page.locator("main").inner_text(timeout=2_000)[:1_500]
            except Exception as error:  # the page itself may be what failed
                shown = f"(not read: {error})"
            report.sections.append((f"{name} page {page.url}", shown))
    server = funcargs.get("server")
    if isinstance(server, Server):
        report.sections.append(("app log (last 60 lines)", "\n".join(list(server.log)[-60:])))
