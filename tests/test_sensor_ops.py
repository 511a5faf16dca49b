"""Operating the sensor: start/stop events, bind failures, root drop, PROXY protocol, limits, no dial-out."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients import ProxySMTP, curl, make_message
from conftest import LAUNCHER, pick_offset, start_sensor, wait_listening


def test_start_and_stop_events_record_listeners_and_limits(tmp_path):
    sp = start_sensor(tmp_path, config="[limits]\nrecipients = 7\n")
    assert sp.stop() == 0
    starts = sp.events("spampots.sensor.start")
    stops = sp.events("spampots.sensor.stop")
    assert len(starts) == 1 and len(stops) == 1
    ports = sorted(lst.port for lst in starts[0].listeners)
    assert ports == sorted(p + sp.offset for p in (1080, 3127, 8080, 80, 3128, 8000, 6588, 4480, 3382, 81, 25))
    assert starts[0].limits["recipients"] == 7 and starts[0].version
    assert stops[0].uptime_s > 0
    # a closed store: segments compressed, nothing torn
    assert not list((sp.data_dir / "events").rglob("*.jsonl")) and not list((sp.data_dir / "events").rglob("*.open"))
    assert list((sp.data_dir / "events").rglob("*.jsonl.zst"))


def test_port_in_use_is_reported_and_others_still_served(tmp_path):
    offset = pick_offset()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 8080 + offset))
    blocker.listen()
    try:
        sp = start_sensor(tmp_path / "a", offset=offset)
        try:
            err = sp.stderr()
            assert f"port {8080 + offset}: already in use" in err
            assert "Traceback" not in err
            r = curl("--socks5-hostname", f"127.0.0.1:{sp.port(1080)}", "http://still.example/")
            assert r.returncode == 0
        finally:
            sp.stop()
        start = sp.events("spampots.sensor.start")[0]
        assert [f.port for f in start.failed] == [8080 + offset]
        assert 8080 + offset not in {lst.port for lst in start.listeners}
        # --strict: any failed bind is fatal, with a clear line and no traceback
        sp2 = start_sensor(tmp_path / "b", offset=offset, args=("--strict",), wait_port=None)
        assert sp2.proc.wait(15) == 2
        err = sp2.stderr()
        assert "--strict" in err and "Traceback" not in err
    finally:
        blocker.close()


def _without_bind_privilege() -> list[str]:
    """A command prefix that runs without the right to bind ports below 1024."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE")
    return ["setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"]


def test_privileged_port_without_root_explains_fixes(tmp_path):
    cfg = tmp_path / "c.toml"
    free = pick_offset() + 1080
    cfg.write_text("[[listener]]\nport = 1023\n[[listener]]\nport = %d\n" % free)
    data = tmp_path / "var"
    base = [*_without_bind_privilege(), sys.executable, str(LAUNCHER), "run", "--config", str(cfg),
            "--data-dir", str(data), "--address", "127.0.0.1", "--user", ""]
    proc = subprocess.run([*base, "--strict"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if "port 1023" in ln]
    assert len(lines) == 1 and "permission denied" in lines[0]
    assert "run as root" in lines[0].lower() and "CAP_NET_BIND_SERVICE" in lines[0] and "--port-offset" in lines[0]
    assert "Traceback" not in proc.stderr
    # without --strict it starts on the port it can bind
    sp = subprocess.Popen(base, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(free, proc=sp)
    finally:
        sp.terminate()
        err = sp.communicate(timeout=15)[1]
    assert sp.returncode == 0 and "port 1023: permission denied" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_is_dropped_before_serving(tmp_path):
    sp = start_sensor(tmp_path, args=("--user", "nobody"))
    try:
        status = Path(f"/proc/{sp.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(__import__("pwd").getpwnam("nobody").pw_uid)}
        # and it still writes its store
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
            s.sendmail("a@b.example", ["c@d.example"], make_message(1))
    finally:
        sp.stop()
    assert len(sp.events("spampots.smtp.message")) == 1


def test_proxy_protocol_from_trusted_only(tmp_path):
    sp = start_sensor(tmp_path, config='[proxy_protocol]\ntrusted = ["127.0.0.1"]\n')
    try:
        with socket.create_connection(("127.0.0.1", sp.port(25)), timeout=5) as c:
            c.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n")
            f = c.makefile("rb")
            assert f.readline().startswith(b"220")
            c.sendall(b"QUIT\r\n")
            f.readline()
        # v2 from the trusted address
        import struct
        v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
              + socket.inet_aton("198.51.100.9") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 5555, 1080))
        r = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5)
        r.sendall(v2 + b"\x05\x01\x00")
        assert r.recv(2) == b"\x05\x00"
        r.close()
        # an untrusted source cannot claim another address
        u = socket.create_connection(("127.0.0.1", sp.port(25)), timeout=5, source_address=("127.0.0.2", 0))
        u.sendall(b"PROXY TCP4 203.0.113.99 192.0.2.1 40000 25\r\n")
        u.recv(100)
        u.close()
        opens = sp.events("spampots.session.open", wait_for=3, where=lambda e: e.src_ip != "127.0.0.1" or e.proxied_by)
    finally:
        sp.stop()
    by_ip = {e.src_ip: e for e in opens}
    assert "203.0.113.7" in by_ip and by_ip["203.0.113.7"].proxied_by == "127.0.0.1"
    assert "198.51.100.9" in by_ip
    assert "203.0.113.99" not in by_ip and "127.0.0.2" in by_ip


def test_per_source_limit_does_not_starve_others(tmp_path):
    sp = start_sensor(tmp_path, config="[limits]\nmax_sessions_per_ip = 5\nnew_sessions_per_s_per_ip = 1000\n")
    held = []
    try:
        for _ in range(12):
            c = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5, source_address=("127.0.0.9", 0))
            held.append(c)
        time.sleep(0.3)
        # the flooder's extra sessions are cut; another source is served at once
        other = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5, source_address=("127.0.0.10", 0))
        other.sendall(b"\x05\x01\x00")
        assert other.recv(2) == b"\x05\x00"
        other.close()
    finally:
        for c in held:
            c.close()
        sp.stop()
    # coalesced: the first hit at once, the 6 repeats as one event with their count (at stop)
    per_ip = [h for h in sp.events("spampots.limit.hit") if h.limit == "max_sessions_per_ip"]
    assert [h.count for h in per_ip] == [1, 6]
    assert all(h.src_ip == "127.0.0.9" and h.value == 5 for h in per_ip)


def test_idle_timeout_closes_and_records(tmp_path):
    sp = start_sensor(tmp_path, config="[limits]\nidle_timeout_s = 0.5\n")
    try:
        c = socket.create_connection(("127.0.0.1", sp.port(1080)), timeout=5)
        t0 = time.time()
        assert c.recv(10) == b""  # closed by the sensor
        assert time.time() - t0 < 3
        c.close()
        hits = sp.events("spampots.limit.hit", wait_for=1)
    finally:
        sp.stop()
    assert hits[0].limit == "idle_timeout_s"
    closes = sp.events("spampots.session.close")
    assert "idle" in {c.reason for c in closes}


def test_never_dials_out(tmp_path):
    """Every protocol, including names and addresses abusers ask for, under an audit hook."""
    audit = tmp_path / "audit.log"
    sp = start_sensor(tmp_path, audit_file=audit)
    try:
        curl("--socks5-hostname", f"127.0.0.1:{sp.port(1080)}", "http://www.google.com/")
        curl("--socks4", f"127.0.0.1:{sp.port(3127)}", "http://203.0.113.5/")
        curl("--proxy", f"http://127.0.0.1:{sp.port(8080)}", "http://dial.example.com/")
        curl("-p", "--proxy", f"http://127.0.0.1:{sp.port(80)}", "http://203.0.113.80/")
        curl("--socks5-hostname", f"127.0.0.1:{sp.port(1080)}", "-k", "https://tls.example/")
        with ProxySMTP(f"socks5://127.0.0.1:{sp.port(1080)}", "gmail-smtp-in.l.google.com", 25,
                       rdns=True, timeout=10) as s:
            s.sendmail("a@b.example", ["c@gmail.com"], make_message(1))
        with smtplib.SMTP("127.0.0.1", sp.port(25), timeout=10) as s:
            s.sendmail("a@b.example", ["c@yahoo.com"], make_message(2))
        msgs = sp.events("spampots.smtp.message", wait_for=2)
    finally:
        sp.stop()
    assert len(msgs) == 2
    log = audit.read_text() if audit.exists() else ""
    assert log == "", f"the sensor made outbound network calls:\n{log}"


def test_audit_hook_sees_outbound_calls(tmp_path):
    """The no-dial-out test is only as good as its hook: prove it catches a connect."""
    audit = tmp_path / "a.log"
    code = ("import os,sys,runpy; sys.argv=['x','--version'];"
            "exec(open(%r).read().split('from spampots.cli')[0]);"
            "import socket; s=socket.socket();\ntry: s.connect(('127.0.0.1', 9))\nexcept OSError: pass")
    subprocess.run([sys.executable, "-c", code % str(LAUNCHER)], env={**os.environ, "SPAMPOTS_TEST_AUDIT": str(audit)},
                   timeout=20)
    assert "socket.connect" in audit.read_text()


def test_no_outbound_primitives_in_source():
    """No code path of the sensor opens outbound connections or resolves names."""
    src = Path(__file__).parent.parent / "src" / "spampots"
    forbidden = re.compile(r"open_connection\(|create_connection\(|getaddrinfo\(|gethostbyname|"
                           r"(?<!sqlite3)\.connect(_ex)?\(|sock_connect\(|urlopen\(|http\.client|"
                           r"create_datagram_endpoint\(|sendto\(")
    # clients of our own services or load generators, never the sensor; outputs dial only the
    # receivers the operator configured (a SIEM's syslog), never a target an abuser names; serve
    # only listens (its lake.connect is DuckDB's)
    allowed_dirs = {"transport", "analysis", "policy", "loadgen", "outputs", "serve"}
    bad = []
    for path in src.rglob("*.py"):
        if allowed_dirs & set(path.relative_to(src).parts[:-1]):
            continue
        text = path.read_text()
        bad += [f"{path.name}: {m.group(0)}" for m in forbidden.finditer(text)]
    assert bad == []


def test_check_config_reports_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[sensor]\nid = "br-dsl-1"\n[[listener]]\nport = 2525\nkind = "smtp"\n')
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(good)], capture_output=True, text=True)
    assert r.returncode == 0 and "br-dsl-1" in r.stdout and "2525/smtp" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nidel_timeout_s = 5\n[[listener]]\nport = 70000\nkind = "ftp"\n')
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "idel_timeout_s" in r.stderr and "Traceback" not in r.stderr
    bad.write_text('[[listener]]\nport = 70000\nkind = "ftp"\n')
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "port must be 1..65535" in r.stderr and "kind must be one of" in r.stderr
    bad.write_text("[sensor\n")
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    ex = subprocess.run([sys.executable, "-m", "spampots.cli", "example-config"], capture_output=True, text=True)
    (tmp_path / "ex.toml").write_text(ex.stdout)
    r = subprocess.run([sys.executable, "-m", "spampots.cli", "check-config", str(tmp_path / "ex.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
