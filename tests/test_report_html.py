"""The HTML report in headless Chromium: tables and charts present, no console errors, nothing
external, and attacker text (a <script> subject, an onerror= HELO...) shown, never run.

A control page with the same payloads unescaped proves the harness would see them run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spampots import events as ev
from spampots.analysis.cli import main as cli_main
from test_analysis_pipeline import talk_like

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test.sh installs it)")

SCRIPT = "<script>document.title='pwned';console.error('pwned')</script>"
IMG = "<img src=x onerror=\"document.title='pwned'\">"
SVG = "<svg onload=\"document.title='pwned'\"></svg>"


def chromium(page: Path, tmp: Path) -> tuple[str, str]:
    """(dumped DOM, console log lines) of a page loaded from disk, offline."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = "\n".join(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)
    return proc.stdout, console


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("html")
    c = talk_like(d)
    s = c.session("8.8.8.8", 1080).request("socks5", "mx.evil.example", 25, username=IMG, password=SCRIPT)
    s.mail(2, "socks5:mx.evil.example:25", subject=SCRIPT, helo=IMG, mail_from=f"x@{SVG}")
    s.mail(1, "socks5:mx.evil.example:25", subject=IMG + " | col", helo="ok")
    c.add(ev.TlsHello(target_host="a", target_port=443, sni=SVG, tls_version="TLS1.2"), s, 1, "tls")
    c.flush()
    out = d / "report.html"
    assert cli_main(["report", "--data-dir", str(d), "--out", str(out), "--charts", str(d / "charts"), "-q"]) == 0
    return out


def test_report_renders_offline_with_tables_charts_and_no_console_errors(hostile_report: Path,
                                                                         tmp_path: Path) -> None:
    dom, console = chromium(hostile_report, tmp_path / "profile")
    assert "<title>spampots report</title>" in dom
    assert console == ""
    for table in ("summary", "ports", "outbound_http", "outbound_socks", "top_countries", "subjects",
                  "credentials"):
        assert f'id="t-{table}"' in dom, table
    assert "Outbound attempts: SOCKS" in dom and "Out to 25/TCP" in dom
    assert len(re.findall(r"<svg\b", dom)) >= 6  # the charts, inline
    for name in ("daily", "daily_protocol", "daily_port", "daily_sensor", "ports", "outbound", "countries", "map",
                 "asns", "hours"):
        assert f'id="chart-{name}"' in dom
        assert (hostile_report.parent / "charts" / f"{name}.svg").stat().st_size > 1000
        assert (hostile_report.parent / "charts" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_self_contained(hostile_report: Path) -> None:
    html = hostile_report.read_text()
    assert not re.search(r"<(script|link|iframe|object|embed|img)\b", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "@import" not in html and "url(http" not in html and "@font-face" not in html
    assert "Content-Security-Policy" in html


def test_attacker_text_is_shown_not_run(hostile_report: Path, tmp_path: Path) -> None:
    dom, console = chromium(hostile_report, tmp_path / "p1")
    assert "pwned" not in console and "<title>spampots report</title>" in dom
    # the payloads are text in the page: escaped in the serialised DOM, no such elements exist
    assert "&lt;script&gt;document.title='pwned'" in dom
    assert "&lt;img src=x onerror=" in dom and "&lt;svg onload=" in dom
    assert not re.search(r"<(script|img)\b", dom) and not re.search(r"<[a-z]+[^>]*\son[a-z]+=", dom)
    # and without the CSP meta (escaping alone): still nothing runs
    bare = tmp_path / "no-csp.html"
    bare.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", hostile_report.read_text()))
    dom, console = chromium(bare, tmp_path / "p2")
    assert "<title>spampots report</title>" in dom and "pwned" not in console


def test_control_page_shows_the_harness_would_catch_execution(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>control</title></head><body>{IMG}{SCRIPT}</body></html>")
    dom, console = chromium(page, tmp_path / "p")
    assert "<title>pwned</title>" in dom and "pwned" in console


def test_pt_BR_page_renders_with_the_same_figures(hostile_report: Path, tmp_path: Path) -> None:
    page = tmp_path / "pt.html"
    assert cli_main(["report", "--data-dir", str(hostile_report.parent), "--out", str(page), "--locale", "pt_BR",
                     "-q", "--no-compact"]) == 0
    dom, console = chromium(page, tmp_path / "profile")
    assert console == "" and "pwned" not in console and '<html lang="pt-BR">' in dom
    assert "Resumo da coleta" in dom and "Tentativas de saída de tráfego: SOCKS" in dom and "Saída para 25/TCP" in dom
    assert "Collection summary" not in dom and "&lt;script&gt;document.title='pwned'" in dom
    assert "IPs de origem por país" in dom  # the map's title, a chart word
