"""The operator's console in a real browser: Debian's headless Chromium driven by Selenium,
against the gateway under real gunicorn (gunicorn.conf.py) and the fake upstream.

The acceptance flow of issue 17: sign in, create a key, copy its secret (read back from the
clipboard), call /v1/chat/completions with it through the openai SDK, see the call in the usage
chart and table within the flush interval, change its limit, revoke it, see the API answer 401,
sign out; a wrong master key, a missing CSRF token and an expired session are refused. Every
page is captured at 360 and 1440 px (into CONSOLE_SCREENSHOTS_DIR, e.g. docs/console, else the
test's temporary folder), and the test fails if the browser logs an error or a CSP violation.

Needs ``chromium`` and ``chromium-driver`` (``make test-tools`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.conftest import CANARY_MASTER_KEY
from tests.e2e.conftest import AUTH, GatewayServer, request

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTHS = (360, 1440)
UI = "/admin/ui"


def _driver() -> webdriver.Chrome:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are missing: make test-tools installs them (apt-get)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


class Browser:
    """One Chromium, its console log checked after every page, screenshots at both widths."""

    def __init__(self, server: GatewayServer, shots: Path) -> None:
        self.server = server
        self.shots = shots
        self.driver = _driver()
        self.driver.implicitly_wait(0)
        self.driver.execute_cdp_cmd(
            "Browser.grantPermissions", {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}
        )

    def open(self, path: str) -> None:
        self.driver.get(self.server.url + path)

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.server.url)

    def clean_log(self, *expected_statuses: int) -> None:
        """No error and no CSP violation in the browser's console since the last check
        (a failed load with one of ``expected_statuses`` is the refusal being tested)."""
        problems = []
        for entry in self.driver.get_log("browser"):
            message = entry["message"]
            if any(f"status of {status}" in message for status in expected_statuses):
                continue
            if entry["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in message or "Refused to" in message:
                problems.append(message)
        assert not problems, problems

    def unlabelled(self) -> list[str]:
        """Controls without a label: an input, select or textarea needs a <label for> (or an
        aria-label), a button or link some text."""
        return self.driver.execute_script(
            """
            const missing = [];
            for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
              const named = (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.getAttribute("aria-label");
              if (!named) missing.push(el.outerHTML.slice(0, 80));
            }
            for (const el of document.querySelectorAll("button, a[href]")) {
              if (!el.textContent.trim() && !el.getAttribute("aria-label")) missing.push(el.outerHTML.slice(0, 80));
            }
            return missing;
            """
        )

    def shoot(self, name: str) -> None:
        assert not self.unlabelled(), (name, self.unlabelled())
        for width in WIDTHS:
            self.driver.set_window_size(width, 900)
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(width, min(int(height) + 120, 4000))
            self.driver.save_screenshot(str(self.shots / f"{name}-{width}.png"))
            inner, scrolled = self.driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
            assert inner == width, f"the viewport is {inner} px wide, not {width}"
            assert scrolled <= inner, f"{name} scrolls sideways at {width} px ({scrolled} px wide)"
        self.driver.set_window_size(1440, 900)
        self.clean_log()

    def click(self, css: str) -> None:
        """Click what ``css`` finds and wait for the page it leads to."""
        page = self.find("html")
        self.find(css).click()
        WebDriverWait(self.driver, 10).until(expected_conditions.staleness_of(page))

    def submit(self, form_css: str) -> None:
        self.click(f"{form_css} button[type=submit]")

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def browser_for(shots: Path) -> Iterator:
    browsers: list[Browser] = []

    def start(server: GatewayServer) -> Browser:
        browsers.append(Browser(server, shots))
        return browsers[-1]

    yield start
    for browser in browsers:
        browser.quit()


def _sign_in(browser: Browser, key: str) -> None:
    browser.find("#key").send_keys(key)
    browser.submit("form.narrow")


def _wait_for(condition, timeout: float, refresh) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
        refresh()
    return condition()


def test_the_whole_console_flow_in_a_browser(gateway_server, browser_for) -> None:
    server = gateway_server(USAGE_BATCH_SECONDS="0.2", KEY_CACHE_SECONDS="0", RATE_LIMIT_GENERAL="1000 per minute")
    browser = browser_for(server)

    browser.open(UI + "/")  # no session: to the sign-in page
    assert browser.path().startswith(UI + "/sign-in")
    browser.shoot("sign-in")
    _sign_in(browser, "not-the-master-key")
    assert "not the master key" in browser.text()
    browser.clean_log(401)

    _sign_in(browser, CANARY_MASTER_KEY)
    assert browser.path() == UI + "/" and "Traffic" in browser.text()
    browser.clean_log()

    browser.click("a[href$='/keys']")
    browser.click("a[href$='/keys/new']")
    browser.shoot("key-new")
    browser.find("#f-name").send_keys("browser-app")
    browser.find("#f-rate_limit_ai").send_keys("50 per minute")
    browser.submit("form.stack")
    assert "shown this once" in browser.text()
    secret = browser.find("#secret").get_attribute("value")
    assert secret.startswith("aip_")
    browser.find("#copy-secret").click()
    assert _wait_for(lambda: "clipboard" in browser.find("#copy-status").text, 3, lambda: None)
    copied = browser.driver.execute_async_script("navigator.clipboard.readText().then(arguments[0], e => arguments[0]('ERR ' + e))")
    assert copied == secret
    browser.shoot("key-secret")
    key_id = browser.find("a[href*='/keys/key_']").get_attribute("href").rsplit("/", 1)[1]

    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=copied, max_retries=0, timeout=10)
    answer = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content

    browser.open(f"{UI}/usage?key={key_id}")
    seen = _wait_for(lambda: key_id in browser.find("#usage-table").text, 5, browser.driver.refresh)
    assert seen, "the call is not in the usage table within the flush interval"
    assert browser.driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    assert "1 requests, 0 failed" in browser.text()
    browser.open(UI + "/usage")
    browser.shoot("usage")
    browser.open(UI + "/")
    assert key_id in browser.driver.page_source  # among the top keys
    browser.shoot("overview")

    browser.open(f"{UI}/keys/{key_id}")
    limit = browser.find("#f-rate_limit_ai")
    limit.clear()
    limit.send_keys("2 per minute")
    browser.submit("form.stack")
    assert "Saved." in browser.text() and browser.find("#f-rate_limit_ai").get_attribute("value") == "2 per minute"
    _, _, body = request(server.url, "GET", f"/admin/keys/{key_id}", headers=AUTH)
    assert json.loads(body)["rate_limit_ai"] == "2 per minute"
    browser.shoot("key")

    browser.click("a.danger")
    browser.shoot("key-revoke")
    browser.click("button.danger")
    assert browser.find("#key-status").text == "revoked"
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}])

    browser.open(UI + "/keys")
    browser.shoot("keys")
    browser.open(UI + "/audit")
    assert "console" in browser.text() and "revoke" in browser.text()
    browser.shoot("audit")
    browser.open(UI + "/backends")
    browser.shoot("backends")

    browser.open(UI + "/keys/new")  # a form whose CSRF token is gone is refused
    browser.driver.execute_script("document.querySelector('form.stack input[name=csrf_token]').remove()")
    browser.find("#f-name").send_keys("no-token")
    browser.submit("form.stack")
    assert "did not come from this console" in browser.text()
    browser.clean_log(400)

    browser.open(UI + "/")
    browser.click("form.sign-out button")
    assert browser.path().startswith(UI + "/sign-in")
    browser.open(UI + "/keys")
    assert browser.path().startswith(UI + "/sign-in")
    browser.clean_log()


def test_an_expired_session_is_sent_back_to_sign_in(gateway_server, browser_for) -> None:
    server = gateway_server(ADMIN_UI_SESSION_SECONDS="5")
    browser = browser_for(server)
    browser.open(UI + "/sign-in")
    # By keyboard alone: the key field has the focus; Enter signs in.
    page = browser.find("html")
    browser.driver.switch_to.active_element.send_keys(CANARY_MASTER_KEY + Keys.ENTER)
    WebDriverWait(browser.driver, 10).until(expected_conditions.staleness_of(page))
    assert browser.path() == UI + "/"
    browser.driver.switch_to.active_element.send_keys(Keys.TAB)  # the first stop skips to the content
    assert browser.driver.switch_to.active_element.text == "Skip to content"
    browser.driver.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.driver.switch_to.active_element.text == "Overview"
    time.sleep(5.5)
    browser.open(UI + "/keys")
    assert browser.path().startswith(UI + "/sign-in")
    browser.clean_log()
