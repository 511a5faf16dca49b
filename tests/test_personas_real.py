"""Our personas against the real products, byte for byte where we claim to be them.

Each real product (Debian's squid, tinyproxy, dante-server, postfix) runs in a
network namespace of its own with only loopback (tests/real_products.py), set to
refuse every request. Both it and a sensor playing it get the same probes: nmap's
service probes, a CONNECT, an absolute-URI GET, garbage, and for Postfix an EHLO
and STARTTLS. Answers are compared modulo dates, host names, ports, versions
(they vary per sensor) and the lengths that follow from those.

Where we differ on purpose (we grant what the refusing product refuses, and serve
SOCKS on an HTTP proxy's port), the probe is in ``BY_DESIGN`` and only printed;
every other probe must match.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import start_sensor
from real_products import PORTS, PROBES, probe, smtp_dialogue

HOST = "proxy.probe.example"
# nmap's probes that only an open proxy answers differently from one refusing all
BY_DESIGN = {
    "squid": {"Socks4", "Socks5", "CONNECT", "AbsoluteGet"},
    "tinyproxy": {"Socks4", "Socks5", "CONNECT", "AbsoluteGet"},
    "dante": {"Socks4", "Socks5"},
}
BINARIES = {"squid": "squid", "tinyproxy": "tinyproxy", "dante": "danted", "postfix": "postfix"}

pytestmark = [
    pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("ip"), reason="needs unshare and ip"),
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the real products run as root in a namespace of their own"),
]

_DATE = re.compile(rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d (GMT|[+-]\d{4})")
_VERSIONS = re.compile(rb"(squid/|tinyproxy/|tinyproxy version )\d+\.\d+(\.\d+)?")


def real(product: str) -> dict:
    """The real product's answers (see real_products.py); skip when it cannot run here."""
    if not shutil.which(BINARIES[product]):
        pytest.skip(f"{product} not installed (scripts/test.sh installs it)")
    here = Path(__file__).parent
    # the products' own users (postfix, proxy, nobody) must reach their work dir
    work = Path(tempfile.mkdtemp(prefix=f"spampots-real-{product}-"))
    work.chmod(0o755)
    try:
        r = subprocess.run(["unshare", "--net", "--mount", sys.executable, str(here / "real_products.py"), product,
                            str(work / "run"), HOST], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if r.returncode != 0 and "unshare" in r.stderr and "Operation not permitted" in r.stderr:
        pytest.skip("cannot make a network namespace here")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def normal(data: bytes, port: int) -> bytes:
    data = _DATE.sub(b"DATE", data)
    data = _VERSIONS.sub(rb"\1V", data)
    data = re.sub(rb"Content-Length: \d+", b"Content-Length: N", data)
    return data.replace(f"{HOST}:{port}".encode(), b"HOST:PORT").replace(HOST.encode(), b"HOST")


def shape(data: bytes, port: int) -> tuple[str, list[str], bytes]:
    """Status line, header names in order, body; all normalised."""
    data = normal(data, port)
    if not data.startswith(b"HTTP/"):
        return "", [], data
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], [line.split(":", 1)[0] for line in lines[1:]], body


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    listeners = "".join(
        f'[[listener]]\nport = {port}\nkind = "{"smtp" if p == "postfix" else "socks" if p == "dante" else "http"}"\n'
        f'persona = "{p}"\n' for p, port in PORTS.items())
    sp = start_sensor(tmp_path_factory.mktemp("ours"), wait_port=None, config=(
        f'[smtp]\nhostname = "{HOST}"\n[limits]\nnew_sessions_per_s_per_ip = 1000\n' + listeners))
    from conftest import wait_listening
    wait_listening(sp.port(1080), proc=sp.proc)
    yield sp
    sp.stop()


def compare(product: str, theirs: dict, sp) -> list[str]:
    """Every difference, worded; asserts that none is outside BY_DESIGN."""
    port = sp.port(PORTS[product])
    diffs, unexpected = [], []
    for name, data in PROBES.items():
        got, closed = probe(port, data)
        want, want_closed = base64.b64decode(theirs[name][0]), theirs[name][1]
        a, b = shape(want, PORTS[product]), shape(got, port)
        notes = []
        if a[0] != b[0]:
            notes.append(f"status {a[0]!r} vs ours {b[0]!r}")
        if a[1] != b[1]:
            notes.append(f"headers {a[1]} vs ours {b[1]}")
        if a[2] != b[2]:
            notes.append(f"body {len(want)} bytes {a[2][:80]!r} vs ours {len(got)} bytes {b[2][:80]!r}")
        if want_closed != closed:
            notes.append(f"{'closes' if want_closed else 'keeps the connection'} vs ours "
                         f"{'closes' if closed else 'keeps it'}")
        if notes:
            line = f"{product} {name}: " + "; ".join(notes)
            diffs.append(line)
            if name not in BY_DESIGN[product]:
                unexpected.append(line)
    print("\n".join(diffs) or f"{product}: no difference")
    assert not unexpected, "\n".join(unexpected)
    return diffs


@pytest.mark.parametrize("product", ["squid", "tinyproxy", "dante"])
def test_proxy_answers_like_the_real_one(product, ours):
    compare(product, real(product), ours)


def test_postfix_banner_and_ehlo_like_the_real_one(ours):
    theirs = [base64.b64decode(r) for r in real("postfix")["smtp"]]
    mine = smtp_dialogue(ours.port(25))
    banner, ehlo, starttls = (normal(r, 25) for r in theirs)
    our_banner, our_ehlo, our_starttls = (normal(r, ours.port(25)) for r in mine)
    print("postfix EHLO:", ehlo, "\nours:", our_ehlo)
    assert our_banner == banner
    assert our_starttls == starttls

    def keywords(reply: bytes) -> list[str]:
        return [line[4:].decode().split(" ")[0] for line in reply.split(b"\r\n") if line]

    # by design: we offer AUTH (credentials are what we collect) and no CHUNKING (BDAT is
    # not served); SIZE shows our [limits] message_size
    assert keywords(our_ehlo)[0] == keywords(ehlo)[0] == "HOST"
    assert [k for k in keywords(our_ehlo) if k != "AUTH"] == [k for k in keywords(ehlo) if k != "CHUNKING"]
