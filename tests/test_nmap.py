"""Standard scanners judge the sensor an open proxy / open relay on every default port.

The sensor listens on the talk's ports plus an offset, where nmap's port rules
(1080, 8080, 25, ...) do not match, so the scripts are forced with ``+``: they
then run exactly as on the real ports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from dnsstub import ANSWER_IP, DnsStub

pytestmark = pytest.mark.skipif(not shutil.which("nmap"), reason="nmap not installed (apt-get install nmap)")


def _nmap(ports: list[int], script: str, extra: tuple[str, ...] = ()) -> str:
    # -n: no reverse DNS; --dns-servers: any name lookup goes to our loopback stub only.
    cmd = ["nmap", "-n", "-Pn", "-sT", "--dns-servers", "127.53.0.1", "-p", ",".join(map(str, ports)),
           "--script", script, *extra, "127.0.0.1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _per_port(output: str) -> dict[int, str]:
    """The script lines under each port in nmap's normal output."""
    blocks: dict[int, str] = {}
    current = None
    for line in output.splitlines():
        m = re.match(r"^(\d+)/tcp\s+open", line)
        if m:
            current = int(m.group(1))
            blocks[current] = ""
        elif line.startswith("|") and current is not None:
            blocks[current] += line + "\n"
    return blocks


@pytest.mark.skipif(os.geteuid() != 0, reason="the DNS stub binds port 53 on 127.53.0.1")
def test_socks_open_proxy(sensor):
    ports = [sensor.port(p) for p in (1080, 3127)]
    with DnsStub() as dns:
        out = _per_port(_nmap(ports, "+socks-open-proxy"))
    assert "www.google.com" in dns.queries
    for p in ports:
        assert "status: open" in out.get(p, ""), f"port {p}:\n{out.get(p)}"
    # 1080 plays Dante (SOCKS 4 and 5); 3127 MyDoom's proxy, which speaks SOCKS4 only
    assert re.search(r"versions:\s*\n\|\s+socks4\s*\n\|_?\s+socks5", out[ports[0]]), out[ports[0]]
    assert re.search(r"versions:\s*\n\|_?\s+socks4\s*$", out[ports[1]]), out[ports[1]]
    hits = sensor.events("spampots.proxy.request")
    assert {e.proxy for e in hits if e.target_host == ANSWER_IP} >= {"socks4", "socks5"}


def test_http_open_proxy(sensor):
    ports = [sensor.port(p) for p in (8080, 80, 3128, 8000, 6588, 4480, 3382, 81)]
    out = _per_port(_nmap(ports, "+http-open-proxy"))
    for p in ports:
        block = out.get(p, "")
        assert "Potentially OPEN proxy" in block, f"port {p}:\n{block}"
        assert all(m in block for m in ("GET", "HEAD", "CONNECT")), block


def test_smtp_open_relay(sensor):
    port = sensor.port(25)
    out = _per_port(_nmap([port], "+smtp-open-relay"))
    assert re.search(r"Server is an open relay \((\d+)/\1 tests\)", out.get(port, "")), out


def test_service_detection_sees_proxies_and_mta_not_ssl(sensor):
    """nmap -sV must not file our proxy ports as SSL or SMTP (a tell-tale of a honeypot)."""
    ports = [sensor.port(p) for p in (1080, 8080, 25)]
    r = subprocess.run(["nmap", "-n", "-Pn", "-sT", "-sV", "--version-intensity", "5", "-p",
                        ",".join(map(str, ports)), "127.0.0.1"], capture_output=True, text=True, timeout=300)
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)/tcp\s+open\s+(.*)$", r.stdout, re.M)}
    assert "smtp" in lines[sensor.port(25)]
    for p in ports[:2]:
        assert "ssl" not in lines[p] and "smtp" not in lines[p], lines[p]


#: What nmap's own signatures (nmap-service-probes) call each talk port's default persona.
#: nmap knows no SOCKS server by name: for Dante, as for the real one, it names the protocol.
SERVICE_NAMES = {
    1080: r"socks5\s+\(",
    3127: r"mydoom\s+MyDoom virus backdoor",
    8080: r"http-proxy\s+CCProxy http proxy",
    80: r"http\s+Apache httpd 2\.4\.\d+ \(\(Debian\)\)",
    3128: r"http-proxy\s+Squid http proxy 5\.\d",
    8000: r"http-proxy\s+tinyproxy 1\.11\.\d",
    6588: r"http-proxy\s+AnalogX web proxy",
    4480: r"http-proxy\s+Proxy\+ http proxy",
    3382: r"http-proxy\s+WinGate httpd \d",
    81: r"http-proxy\s+Squid http proxy 5\.\d",
    25: r"smtp\s+\S",
}


def test_version_detection_names_every_talk_port(sensor):
    """nmap -sV --version-all names each default port as the product its persona claims."""
    ports = {sensor.port(p): p for p in SERVICE_NAMES}
    r = subprocess.run(["nmap", "-n", "-Pn", "-sT", "-sV", "--version-all", "-p", ",".join(map(str, ports)),
                        "127.0.0.1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)/tcp\s+open\s+(.*)$", r.stdout, re.M)}
    named = {talk: lines.get(port, "") for port, talk in ports.items()}
    wrong = {talk: line for talk, line in named.items() if not re.match(SERVICE_NAMES[talk], line)}
    assert not wrong, f"named {len(named) - len(wrong)} of {len(named)}; wrong: {wrong}\n{r.stdout}"
