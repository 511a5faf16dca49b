"""Standard scanners judge the sensor an open proxy / open relay on every default port."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(not shutil.which("nmap"), reason="nmap not installed (apt-get install nmap)")


def _nmap(ports: list[int], script: str, extra: tuple[str, ...] = ()) -> str:
    cmd = ["nmap", "-n", "-Pn", "-sT", "-p", ",".join(map(str, ports)),
           "--script", script, *extra, "127.0.0.1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _per_port(output: str) -> dict[int, str]:
    """Split nmap's normal output into the script lines under each port."""
    blocks: dict[int, str] = {}
    current = None
    for line in output.splitlines():
        m = re.match(r"^(\d+)/tcp\s+open", line)
        if m:
            current = int(m.group(1))
            blocks[current] = ""
        elif line.startswith("|") and current is not None:
            blocks[current] += line + "\n"
        elif not line.startswith("|"):
            current = None if not m else current
    return blocks


def test_socks_open_proxy(sensor):
    ports = [sensor.port(p) for p in (1080, 3127)]
    out = _per_port(_nmap(ports, "socks-open-proxy"))
    for p in ports:
        assert "status: open" in out.get(p, ""), f"port {p}:\n{out.get(p)}"
        assert re.search(r"versions succ?essfully tested: .*4.*5", out[p]), out[p]


def test_http_open_proxy(sensor):
    ports = [sensor.port(p) for p in (8080, 80, 3128, 8000, 6588, 4480, 3382, 81)]
    out = _per_port(_nmap(ports, "http-open-proxy"))
    for p in ports:
        block = out.get(p, "")
        assert "Potentially OPEN proxy" in block, f"port {p}:\n{block}"
        assert all(m in block for m in ("GET", "HEAD", "CONNECT")), block


def test_smtp_open_relay(sensor):
    port = sensor.port(25)
    out = _per_port(_nmap([port], "smtp-open-relay", ("--script-args", "smtp-open-relay.domain=victim.example")))
    assert "Server is an open relay" in out.get(port, ""), out
