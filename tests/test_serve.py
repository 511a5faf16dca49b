"""`spampots serve` in a real browser: Debian's chromium, headless, through selenium and
chromium-driver, over a capture made by a real sensor (smtplib direct and through SOCKS5).

Checks that every panel renders with the figures `spampots report` and `policy port25` give,
that the live counter moves when a message arrives, that a drill-down reaches one message,
that a token keeps others out, and that attacker payloads (HELO, subject, headers, body, URLs)
are shown and never run. Screenshots of the main views go to $SPAMPOTS_SCREENSHOTS (default:
the test's tmp dir).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from clients import ProxySMTP
from conftest import SensorProc, start_sensor, wait_listening

pytest.importorskip("aiohttp")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium and chromium-driver not installed (scripts/test.sh installs them)")

# Each would set window.__pwned if the page ever let it run.
PWN_SCRIPT = "<script>window.__pwned='script'</script>"
PWN_IMG = "<img src=x onerror=\"window.__pwned='img'\">"
PWN_SVG = "\"><svg onload=\"window.__pwned='svg'\">"
PWN_URL = "javascript:window.__pwned='url'"
PAYLOADS = (PWN_SCRIPT, PWN_IMG, PWN_SVG, PWN_URL)
TOKEN = "t0ken-for-the-test"


def hostile_message(i: int) -> bytes:
    body = (f"<html><body>{PWN_SCRIPT}{PWN_IMG}<a href=\"{PWN_URL}\">click</a>"
            f"<a href=\"http://spam.example/{PWN_SVG}\">x</a> message {i}</body></html>\r\n")
    return (f"From: {PWN_IMG} <a@spam.example>\r\nTo: victim@example.org\r\n"
            f"Subject: {PWN_SCRIPT} offer {i}\r\nX-Link: {PWN_URL}\r\nMessage-ID: <h{i}@spam.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{body}").encode()


def send_direct(sp: SensorProc, i: int, helo: str = PWN_SVG) -> None:
    with smtplib.SMTP("127.0.0.1", sp.port(25), local_hostname=helo, timeout=20) as s:
        s.sendmail("a@spam.example", ["victim@example.org"], hostile_message(i))


def send_socks(sp: SensorProc, i: int) -> None:
    with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "mx.victim.example", 25,
                   local_hostname=PWN_IMG, timeout=20) as s:
        s.sendmail("b@spam.example", ["one@victim.example", "two@victim.example"], hostile_message(100 + i))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, data_dir: Path, tmp: Path, *, config: str = "", args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        cfg = tmp / "serve.toml"
        cfg.write_text(config)
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spampots.cli", "serve", "--data-dir", str(data_dir), "--config", str(cfg),
             "--port", str(self.port), "--asn-db", "none", "-q", *args],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_listening(self.port, timeout=90, proc=self.proc)
            auth = {"Authorization": f"Bearer {TOKEN}"}  # ignored when no token is set
            wait(lambda: self.figures_ready(auth), "the figures", 180)
        except Exception:
            self.stop()
            raise RuntimeError(f"serve did not start:\n{self.log.read_text()}")

    def figures_ready(self, headers: dict[str, str]) -> bool:
        """It listens at once; the figures come when computed (503 until then), Port 25's last."""
        assert self.proc.poll() is None, self.log.read_text()
        status, _, body = self.get("/api/overview", headers)
        return status == 200 and json.loads(body)["port25"] is not None

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SensorProc]:
    sp = start_sensor(tmp_path_factory.mktemp("serve-sensor"),
                      config="[sensor]\nheartbeat_interval_s = 5\n[limits]\nnew_sessions_per_s_per_ip = 1000\n")
    try:
        for i in range(3):
            send_direct(sp, i)
        for i in range(2):
            send_socks(sp, i)
        assert len(sp.events("spampots.smtp.message", wait_for=5, timeout=20)) >= 5
        yield sp
    finally:
        sp.stop()


@pytest.fixture(scope="module")
def served(capture: SensorProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(capture.data_dir, tmp_path_factory.mktemp("serve"), args=("--refresh", "0"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("SPAMPOTS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def load(browser: Any, url: str) -> None:
    browser.get(url)
    wait(lambda: browser.execute_script("return document.body.dataset.readyMs"), "every panel", 60)


def cells(browser: Any, table: str) -> list[list[str]]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(tr => [...tr.querySelectorAll('td')]"
        ".map(td => td.textContent))", f'[data-table="{table}"] tr:has(td)')


def reports_json(data_dir: Path, tmp: Path, *commands: tuple[str, ...]) -> list[dict]:
    """The JSON each command (`report`, `policy port25`) writes for the data dir, run side by side."""
    outs = [tmp / f"{'-'.join(c)}.json" for c in commands]
    procs = [subprocess.Popen([sys.executable, "-m", "spampots.cli", *c, "--data-dir", str(data_dir), "--asn-db",
                               "none", "--no-compact", "--format", "json", "--out", str(o), "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c, o in zip(commands, outs)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    return [json.loads(o.read_text()) for o in outs]


def expected_cells(table: dict) -> list[list[str]]:
    from spampots.analysis.render import fmt

    return [[fmt(row[c["key"]], c["kind"]) for c in table["columns"]] for row in table["rows"]]


def pwned(browser: Any) -> Any:
    return browser.execute_script("return window.__pwned")


def test_every_panel_renders_with_the_reports_figures(served: Serve, capture: SensorProc, browser: Any,
                                                      shots: Path, tmp_path: Path) -> None:
    load(browser, served.url + "/")
    for panel in ("live", "series", "map", "talk", "top", "port25", "campaigns", "health"):
        assert browser.execute_script(f"return document.querySelector('[data-panel={panel}]').dataset.ready") == "1"
    report, policy = (r["tables"] for r in reports_json(capture.data_dir, tmp_path, ("report",),
                                                              ("policy", "port25")))
    # the summary is one row shown as label/value pairs
    summary = [c[0] for c in cells(browser, "summary")]
    assert summary == expected_cells(report["summary"])[0]
    assert report["summary"]["rows"][0]["emails"] >= 5
    for name in ("ports", "ports_sessions", "outbound_http", "outbound_socks", "top_countries", "top_asns",
                 "campaigns", "subjects", "helo", "credentials"):
        assert cells(browser, name) == expected_cells(report[name]), name
    for name in ("port25_outcome", "port25_categories", "port25_by_protocol"):
        assert cells(browser, name) == expected_cells(policy[name]), name
    statement = browser.find_element("id", "statement").text
    assert statement == policy["port25_statement"]["rows"][0]["statement"]
    # the chart: one bar stack per day, split by protocol; SOCKS and SMTP both present
    legend = browser.execute_script("return [...document.querySelectorAll('#series-chart .legend span')]"
                                    ".map(s => s.textContent)")
    assert {"SOCKS", "SMTP"} <= set(legend)
    assert browser.execute_script("return document.querySelectorAll('#series-chart rect').length") >= 2
    assert browser.execute_script("return document.querySelectorAll('#map path').length") > 150
    health = "return [...document.querySelectorAll('#health tr')].map(t => t.textContent)"
    wait(lambda: [r for r in browser.execute_script(health) if r.startswith("test-sensorup")], "the sensor up")
    browser.save_screenshot(str(shots / "dashboard.png"))
    browser.execute_script("document.getElementById('port25-panel').scrollIntoView()")
    browser.save_screenshot(str(shots / "dashboard-port25.png"))
    assert pwned(browser) is None


def test_live_counter_moves_when_a_message_arrives(served: Serve, capture: SensorProc, browser: Any) -> None:
    load(browser, served.url + "/")

    def count() -> int:
        text = browser.find_element("id", "live-messages").text.replace(",", "")
        return int(text) if text.isdigit() else -1

    before = wait(lambda: count() >= 5 and count(), "the day's messages on the live counter")
    send_direct(capture, 50, helo="live.example")
    wait(lambda: count() > before, "the live counter to move", timeout=30)
    assert count() == before + 1


def test_pages_left_give_their_live_stream_back(served: Serve, browser: Any) -> None:
    """A browser opens at most 6 connections to a server; every page holds one for its live
    stream. Pages left behind (in the back-forward cache) must close theirs, or the seventh load
    waits, without a free connection, for about a minute."""
    for i in range(7):
        browser.get("about:blank")
        browser.get(served.url + "/")
        wait(lambda: browser.execute_script("return document.body.dataset.readyMs"), f"load {i}", 30)


def test_drill_down_reaches_the_message(served: Serve, capture: SensorProc, browser: Any, shots: Path) -> None:
    load(browser, served.url + "/")
    rows = browser.find_elements("css selector", '[data-table="ports"] tr.clickable')
    port25 = [r for r in rows if r.find_elements("css selector", "td")[0].text == str(capture.port(25))]
    assert port25, "the direct SMTP port is a row of the ports table"
    port25[0].click()
    wait(lambda: browser.execute_script("return document.getElementById('drill').dataset.ready") == "1", "drill-down")
    messages = browser.find_elements("css selector", "#drill-messages tr.clickable")
    assert len(messages) >= 3
    browser.save_screenshot(str(shots / "dashboard-drill.png"))
    messages[0].click()
    wait(lambda: browser.execute_script("return document.getElementById('message').dataset.ready") == "1",
         "the message view")
    sha = browser.find_element("id", "message-sha").text
    headers = browser.execute_script("return [...document.querySelectorAll('#message-headers td')].map(t => t.textContent)")
    assert "Subject" in headers and any(PWN_SCRIPT in h for h in headers) and PWN_URL in headers
    body = browser.find_element("css selector", "#message-body pre").text
    assert PWN_SCRIPT in body and PWN_IMG in body  # shown as text, tags and all
    href = browser.find_element("id", "message-eml").get_attribute("href")
    assert href.endswith(f"/api/message/{sha}/eml")
    status, hdrs, raw = served.get(f"/api/message/{sha}/eml")
    assert status == 200 and hdrs["Content-Type"] == "application/octet-stream"
    assert hdrs["Content-Disposition"].startswith("attachment")
    from spampots.store.messages import MessageStore

    with MessageStore(capture.data_dir, readonly=True) as store:
        assert raw == store.get(sha)
    browser.save_screenshot(str(shots / "dashboard-message.png"))
    assert pwned(browser) is None


def test_attacker_payloads_never_run(served: Serve, capture: SensorProc, browser: Any) -> None:
    # control: the same payloads in a page without escaping or CSP do run in this browser
    for payload in (PWN_IMG, PWN_SVG):
        browser.get("data:text/html," + urllib.request.quote(payload))
        wait(lambda: pwned(browser), f"the control page to run {payload}", 10)
    load(browser, served.url + "/")
    for sel in ('[data-table="helo"] tr.clickable', '[data-table="subjects"] tr.clickable'):
        browser.find_elements("css selector", sel)[0].click()
        wait(lambda: browser.execute_script("return document.getElementById('drill').dataset.ready") == "1", sel)
        browser.find_elements("css selector", "#drill-messages tr.clickable")[0].click()
        wait(lambda: browser.execute_script("return document.getElementById('message').dataset.ready") == "1", sel)
    time.sleep(1)  # an onerror would fire on the image's failed load
    text = browser.find_element("tag name", "body").text
    for payload in (PWN_SCRIPT, PWN_IMG, PWN_URL):
        assert payload in text, payload  # shown literally
    assert pwned(browser) is None
    assert browser.execute_script(
        "return document.querySelectorAll('img, iframe, object, embed, script:not([src]), [onerror], [onload]').length") == 0
    assert [a for a in browser.execute_script("return [...document.querySelectorAll('a')].map(a => a.href)")
            if a.lower().startswith("javascript:")] == []
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in errors if "pwned" in e], errors


def test_http_read_only_headers_and_bounds(served: Serve) -> None:
    for path in ("/", "/api/overview", "/static/app.js", "/api/series?bucket=month&split=sensor"):
        status, hdrs, _ = served.get(path)
        assert status == 200, path
        assert "script-src 'self'" in hdrs["Content-Security-Policy"] and "unsafe-inline" not in \
            hdrs["Content-Security-Policy"]
        assert hdrs["X-Content-Type-Options"] == "nosniff"
    assert served.get("/api/overview", method="POST")[0] == 405
    assert served.get("/api/message/" + "0" * 64)[0] == 404
    assert served.get("/api/message/../../etc/passwd")[0] == 404
    assert served.get("/static/../queries.py")[0] == 404
    assert served.get("/api/drill?day=not-a-day")[0] == 400
    assert served.get("/api/series?bucket=year")[0] == 400
    html = served.get("/")[2].decode()
    assert "<script>" not in html and "style=" not in html and "http" not in html.replace("http-equiv", "")


def test_token_required_when_set(capture: SensorProc, browser: Any, tmp_path: Path) -> None:
    s = Serve(capture.data_dir, tmp_path, config=f'[serve]\ntoken = "{TOKEN}"\nuser = "ana"\npassword = "pw:1"\n',
              args=("--refresh", "0"))
    basic = "Basic " + base64.b64encode(b"ana:pw:1").decode()
    try:
        for path in ("/", "/api/overview", "/api/stream", "/static/app.js", "/api/message/" + "0" * 64 + "/eml"):
            assert s.get(path)[0] == 401, path
        assert s.get("/api/overview", {"Authorization": "Bearer wrong"})[0] == 401
        assert s.get("/?token=wrong")[0] == 401
        assert s.get("/api/overview", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert s.get("/api/overview", {"Authorization": basic})[0] == 200
        assert s.get("/api/overview", {"Authorization": "Basic " + base64.b64encode(b"ana:pw").decode()})[0] == 401
        assert s.get("/api/overview", {"Authorization": "Basic !!"})[0] == 401
        load(browser, f"{s.url}/?token={TOKEN}")  # the token kept in a cookie, the live stream included
        wait(lambda: browser.execute_script("return document.querySelector('[data-panel=live]').dataset.ready"),
             "the live panel behind the token")
    finally:
        s.stop()


def test_refuses_other_addresses_without_credentials(capture: SensorProc, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "spampots.cli", "serve", "--data-dir", str(capture.data_dir),
                           "--address", "0.0.0.0", "--port", str(free_port()), "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not loopback" in proc.stderr


def test_serve_settings_are_checked() -> None:
    from spampots import config

    good = config.ServeSection()
    assert config.serve_problems(good) == []
    assert config.serve_problems(config.ServeSection(address="::1")) == []
    assert "not loopback" in config.serve_problems(config.ServeSection(address="0.0.0.0"))[0]
    assert config.serve_problems(config.ServeSection(address="0.0.0.0", token="x")) == []
    assert config.serve_problems(config.ServeSection(address="192.0.2.1", user="a", password="b")) == []
    assert any("go together" in e for e in config.serve_problems(config.ServeSection(user="a")))
    assert any("IPv4/IPv6" in e for e in config.serve_problems(config.ServeSection(address="localhost")))
    assert any("1..65535" in e for e in config.serve_problems(config.ServeSection(port=0)))
    with pytest.raises(config.ConfigError, match="serve.address"):
        config.validate(config.from_dict({"serve": {"address": "0.0.0.0"}}))
