"""The sensor judged by Debian-packaged third-party clients: swaks, proxychains4, ncat, msmtp, wget, hydra.

Each test checks what the tool saw (its exit status and output) and what the sensor
recorded (events, and the stored message bytes through ``spampots show``).

Safety: every socket these tools open goes to 127.0.0.1. Host names are only ever
sent to the proxy (proxychains ``proxy_dns``, ``ncat --proxy-dns remote``, msmtp's
SOCKS5 client, wget's proxy requests); swaks gets ``--server host:port`` so it does
no MX lookup; hydra needs an address, so it gets a TEST-NET-1 literal that only
travels inside the proxy request (the sensor never dials). ``test_tools_touch_only_loopback``
re-checks that with strace. The tools run with HOME in a temporary directory and
without any *_proxy variables, so no user configuration changes their behaviour.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from test_sensor_clients import _messages, _wait

# tool -> the Debian package that installs it
PACKAGES = {"swaks": "swaks", "proxychains4": "proxychains4", "ncat": "ncat", "msmtp": "msmtp",
            "wget": "wget", "hydra": "hydra", "strace": "strace"}


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if not exe:
        pytest.skip(f"{name} not installed (apt-get install {PACKAGES[name]})")
    return exe


def _run(cmd: list[str], home: Path, *, input_bytes: Optional[bytes] = None, timeout: float = 30,
         env_extra: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(home), LC_ALL="C", **(env_extra or {}))
    return subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout, env=env, cwd=home)


def _all(sensor, name: str, pred, count: int, timeout: float = 5.0) -> list:
    """The events matching ``pred`` once there are at least ``count`` of them (or at the timeout)."""
    deadline = time.time() + timeout
    while True:
        hits = [e for e in sensor.events(name) if pred(e)]
        if len(hits) >= count or time.time() > deadline:
            return hits
        time.sleep(0.1)


def _show(sensor, sha: str) -> bytes:
    out = subprocess.run([sys.executable, "-m", "spampots.cli", "show", sha, "--data-dir", str(sensor.data_dir)],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _stored(sensor, subject: str, expected: bytes) -> list:
    """The one smtp.message event with this subject, its message stored byte for byte as expected."""
    _wait(sensor, "spampots.smtp.message", lambda e: e.subject == subject)
    got = _messages(sensor, subject=subject)
    assert len(got) == 1, got
    assert got[0].sha256 == hashlib.sha256(expected).hexdigest() and got[0].size == len(expected)
    assert _show(sensor, got[0].sha256) == expected
    return got


def _mail(subject: str) -> bytes:
    """A message as stored (CRLF lines, a leading dot that the client must stuff)."""
    return (f"From: Spammer <s@spam.example>\r\nTo: v@victim.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@spam.example>\r\n\r\nCheap meds.\r\n.leading dot\r\nbye\r\n").encode()


def _accepted(swaks_out: str, arrow: str) -> bool:
    """swaks' transcript shows a 250 for the end of DATA, just before its QUIT (any persona's wording)."""
    return re.search(rf"^ \S> \.\n{arrow} 250 .*\n \S> QUIT$", swaks_out, re.M) is not None


def _swaks_data(tmp_path: Path, raw: bytes) -> str:
    """swaks drops a trailing "CRLF.CRLF" from --data and then sends CRLF.CRLF itself, so a file of
    ``raw + b".\\r\\n"`` reaches the server as exactly ``raw``."""
    path = tmp_path / "data.eml"
    path.write_bytes(raw + b".\r\n")
    return f"@{path}"


# -- swaks, direct to port 25 ------------------------------------------------------
@pytest.mark.parametrize("tls,mech", [(False, None), (True, None), (True, "LOGIN"), (False, "PLAIN"), (True, "PLAIN")])
def test_swaks_direct(sensor, tmp_path, tls, mech):
    subject = f"swaks-direct-{int(tls)}-{mech}"
    raw = _mail(subject)
    user, password = f"{subject}@isp.example", "pa ss:w0rd"
    cmd = [_tool("swaks"), "--server", f"127.0.0.1:{sensor.port(25)}", "--helo", "bot.example",
           "--from", "s@spam.example", "--to", "v@victim.example", "--data", _swaks_data(tmp_path, raw),
           "--timeout", "10"]
    if tls:
        cmd.append("-tls")
    if mech:
        cmd += ["-a", mech, "-au", user, "-ap", password]
    r = _run(cmd, tmp_path)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out + r.stderr.decode()
    arrow = "<~ " if tls else "<- "  # swaks marks lines read over TLS with ~
    assert _accepted(out, arrow), out
    if tls:
        assert re.search(r"^ -> STARTTLS\n<-  220 ", out, re.M), out
    if mech:
        assert re.search(rf"^{arrow} 235 ", out, re.M), out
    (e,) = _stored(sensor, subject, raw)
    assert (e.tls, e.depth, e.target_host, e.via, e.helo) == (tls, 0, None, [], "bot.example")
    assert e.auth_user == (user if mech else None)
    if mech:
        (auth,) = _wait(sensor, "spampots.smtp.auth", lambda a: a.username == user)
        assert (auth.mechanism, auth.password, auth.outcome) == (mech, password, "accepted")


# -- proxychains4 + swaks through each proxy kind ---------------------------------------
@pytest.mark.parametrize("kind,talk_port,recorded_as", [
    ("socks5", 1080, "socks5"), ("socks4", 3127, "socks4a"), ("http", 8080, "http"),
])
def test_proxychains_swaks(sensor, tmp_path, kind, talk_port, recorded_as):
    pc = _tool("proxychains4")
    target = f"mx.pc-{kind}.example"
    conf = tmp_path / "proxychains.conf"
    # proxy_dns: the name goes to the proxy (SOCKS4 becomes 4a); nothing is resolved here.
    conf.write_text("strict_chain\nproxy_dns\nremote_dns_subnet 224\ntcp_read_time_out 10000\n"
                    f"tcp_connect_time_out 5000\n[ProxyList]\n{kind} 127.0.0.1 {sensor.port(talk_port)}\n")
    subject = f"proxychains-{kind}"
    raw = _mail(subject)
    r = _run([pc, "-f", str(conf), _tool("swaks"), "--server", f"{target}:25", "--helo", "pc.example",
              "--from", "s@spam.example", "--to", "v@victim.example", "--data", _swaks_data(tmp_path, raw),
              "--timeout", "10"], tmp_path)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out + r.stderr.decode()
    assert f"127.0.0.1:{sensor.port(talk_port)}  ...  {target}:25  ...  OK" in r.stderr.decode()
    assert re.search(rf"^<-  220 {re.escape(target)} ", out, re.M), out  # the banner names the host asked for
    assert _accepted(out, "<- "), out
    (e,) = _stored(sensor, subject, raw)
    assert e.via == [f"{recorded_as}:{target}:25"] and (e.target_host, e.target_port, e.depth) == (target, 25, 1)
    assert e.listener_port == sensor.port(talk_port)
    (req,) = _wait(sensor, "spampots.proxy.request", lambda q: q.target_host == target)
    assert (req.proxy, req.command, req.target_port, req.outcome) == (recorded_as, "connect", 25, "granted")


@pytest.mark.parametrize("kind,creds,recorded", [
    ("http", "pcuser pc-pass", ("basic", "pcuser", "pc-pass")),  # sent upfront in Proxy-Authorization
    ("socks4", "pcident", (None, "pcident", None)),  # the SOCKS4 user id
    # proxychains offers 00 and 02: we ask for the credentials (RFC 1929) and record them
    ("socks5", "pcuser5 pc-pass5", ("userpass", "pcuser5", "pc-pass5")),
])
def test_proxychains_credentials(sensor, tmp_path, kind, creds, recorded):
    pc = _tool("proxychains4")
    target = f"mx.pc-creds-{kind}.example"
    port = sensor.port(8080 if kind == "http" else 1080)
    conf = tmp_path / "proxychains.conf"
    conf.write_text(f"strict_chain\nproxy_dns\nquiet_mode\n[ProxyList]\n{kind} 127.0.0.1 {port} {creds}\n")
    r = _run([pc, "-f", str(conf), _tool("swaks"), "--server", f"{target}:25", "--helo", "pc.example",
              "--from", "s@spam.example", "--to", "v@victim.example", "--quit-after", "RCPT", "--timeout", "10"],
             tmp_path)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out + r.stderr.decode()
    assert re.search(rf"^<-  220 {re.escape(target)} ", out, re.M) and re.search(r"^<-  250 .*\n -> QUIT$", out, re.M)
    (req,) = _wait(sensor, "spampots.proxy.request", lambda q: q.target_host == target)
    assert (req.auth_method, req.username, req.password) == recorded


# -- ncat through each proxy kind, a short SMTP dialogue ---------------------------------
@pytest.mark.parametrize("kind,auth", [
    ("socks4", None), ("socks4", "ident4"), ("socks5", None), ("socks5", "u5:p5"), ("http", None), ("http", "u6:p6"),
])
def test_ncat_proxy_smtp_dialogue(sensor, tmp_path, kind, auth):
    target = f"mx.ncat-{kind}-{'auth' if auth else 'open'}.example"
    subject = f"ncat-{kind}-{bool(auth)}"
    stored = f"Subject: {subject}\r\nFrom: n@spam.example\r\n\r\nhi\r\n.dotted\r\n".encode()
    dialogue = (b"EHLO ncat.example\r\nMAIL FROM:<n@spam.example>\r\nRCPT TO:<v@victim.example>\r\nDATA\r\n"
                + stored.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
    port = sensor.port(8080 if kind == "http" else 1080)
    cmd = [_tool("ncat"), "--proxy", f"127.0.0.1:{port}", "--proxy-type", kind, "--proxy-dns", "remote", "-w", "5"]
    if auth:
        cmd += ["--proxy-auth", auth]
    r = _run([*cmd, target, "25"], tmp_path, input_bytes=dialogue, timeout=20)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out + r.stderr.decode()
    lines = out.splitlines()
    assert lines[0].startswith(f"220 {target} "), out
    assert any(line.startswith(f"250-{target}") for line in lines) and any(line.startswith("354 ") for line in lines)
    assert lines[-2].startswith("250 ") and lines[-1].startswith("221 "), out  # the mail taken, then QUIT
    (e,) = _stored(sensor, subject, stored)
    (req,) = _wait(sensor, "spampots.proxy.request", lambda q: q.target_host == target)
    assert req.proxy == ("socks4a" if kind == "socks4" else kind) and req.target_port == 25
    assert e.via == [f"{req.proxy}:{target}:25"] and e.helo == "ncat.example"
    # SOCKS4: the user id is in the request itself. SOCKS5: ncat offers 00+02 with --proxy-auth and
    # we ask for the pair. HTTP: ncat sends credentials only after a 407, and an open proxy never asks.
    want = {"socks4": (auth, None), "socks5": tuple(auth.split(":")) if auth else (None, None)}.get(kind, (None, None))
    assert (req.username, req.password) == want


# -- msmtp --------------------------------------------------------------------------
def _msmtp_message(subject: str) -> bytes:
    """What msmtp reads on stdin (LF lines, every header it would otherwise add already present)."""
    return (f"From: m@spam.example\nTo: v@victim.example\nDate: Sun, 29 Nov 2026 10:00:00 +0000\n"
            f"Message-ID: <{subject}@spam.example>\nSubject: {subject}\n\nbody line\n.dot line\n").encode()


def _msmtp(tmp_path: Path, *args: str, subject: str) -> bytes:
    raw = _msmtp_message(subject)
    r = _run([_tool("msmtp"), "--file=/dev/null", "--from=m@spam.example", "--domain=msmtp-bot.example",
              "--timeout=10", *args, "v@victim.example"], tmp_path, input_bytes=raw)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    return raw.replace(b"\n", b"\r\n")  # msmtp sends CRLF lines


def test_msmtp_through_socks5(sensor, tmp_path):
    target = "mx.msmtp-socks.example"
    expected = _msmtp(tmp_path, f"--host={target}", "--port=25", "--proxy-host=127.0.0.1",
                      f"--proxy-port={sensor.port(1080)}", "--tls=off", "--auth=off", subject="msmtp-socks5")
    (e,) = _stored(sensor, "msmtp-socks5", expected)
    assert e.via == [f"socks5:{target}:25"] and (e.target_host, e.tls, e.helo) == (target, False, "msmtp-bot.example")


@pytest.mark.parametrize("mech", ["plain", "login"])
def test_msmtp_starttls_auth_direct(sensor, tmp_path, mech):
    user = f"msmtp-{mech}@isp.example"
    expected = _msmtp(tmp_path, "--host=127.0.0.1", f"--port={sensor.port(25)}", "--tls=on", "--tls-starttls=on",
                      "--tls-certcheck=off", f"--auth={mech}", f"--user={user}", "--passwordeval=echo 'p w!'",
                      subject=f"msmtp-direct-{mech}")
    (e,) = _stored(sensor, f"msmtp-direct-{mech}", expected)
    assert e.tls and e.auth_user == user and e.depth == 0 and not e.submission
    (auth,) = _wait(sensor, "spampots.smtp.auth", lambda a: a.username == user)
    assert (auth.mechanism, auth.password) == (mech.upper(), "p w!")


def test_msmtp_submission_587_through_socks5(sensor, tmp_path):
    """A tunnel to 587 meets our submission server: STARTTLS inside the tunnel (the client's SNI
    kept), then AUTH, then the mail, flagged as submission."""
    target, user = "smtp.msmtp-sub.example", "dave@msmtp-sub.example"
    expected = _msmtp(tmp_path, f"--host={target}", "--port=587", "--proxy-host=127.0.0.1",
                      f"--proxy-port={sensor.port(1080)}", "--tls=on", "--tls-starttls=on", "--tls-certcheck=off",
                      "--auth=login", f"--user={user}", "--passwordeval=echo subpw", subject="msmtp-587")
    (e,) = _stored(sensor, "msmtp-587", expected)
    assert (e.target_host, e.target_port, e.tls, e.submission, e.auth_user) == (target, 587, True, True, user)
    (tls,) = _wait(sensor, "spampots.smtp.tls", lambda t: t.target_host == target)
    assert (tls.outcome, tls.sni) == ("established", target)


# -- wget through the HTTP proxy ----------------------------------------------------------
def _wget(sensor, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    proxy = f"http://127.0.0.1:{sensor.port(8080)}"
    return _run([_tool("wget"), "-S", "-O", "-", "-T", "5", "--tries=1", "-e", "use_proxy=on",
                 "-e", f"http_proxy={proxy}", "-e", f"https_proxy={proxy}", *args], tmp_path, timeout=20)


def test_wget_get_through_http_proxy(sensor, tmp_path):
    url = "http://www.wget-site.example/page.html"
    r = _wget(sensor, tmp_path, "--proxy-user=wuser", "--proxy-password=w pass", url)
    assert r.returncode == 0, r.stderr
    assert "HTTP/1.1 200 OK" in r.stderr.decode() and b"<h1>www.wget-site.example</h1>" in r.stdout
    (req,) = _wait(sensor, "spampots.proxy.request", lambda q: q.url == url)
    assert (req.proxy, req.command, req.target_host, req.target_port) == ("http", "get", "www.wget-site.example", 80)
    assert (req.auth_method, req.username, req.password) == ("basic", "wuser", "w pass")  # wget sends them upfront
    (http,) = _wait(sensor, "spampots.http.request", lambda h: h.target == url)
    assert http.role == "proxy" and http.user_agent.startswith("Wget/") and http.status == 200


def test_wget_https_through_http_proxy_records_sni(sensor, tmp_path):
    host = "secure.wget-tls.example"
    r = _wget(sensor, tmp_path, f"https://{host}/")
    assert r.returncode == 4, r.stderr  # network failure: we cannot finish the TLS handshake as the far end
    assert b"Unable to establish SSL connection" in r.stderr
    (req,) = _wait(sensor, "spampots.proxy.request", lambda q: q.target_host == host)
    assert (req.proxy, req.command, req.target_port, req.reply_code) == ("http", "connect", 443, 200)
    (hello,) = _wait(sensor, "spampots.tls.hello", lambda h: h.sni == host)
    assert (hello.target_host, hello.target_port, hello.depth) == (host, 443, 1) and hello.cipher_count > 0


# -- hydra: brute-forcing SMTP AUTH and SOCKS5 ---------------------------------------------
COMBOS = [("h1", "p1"), ("h2@isp.example", "pass word"), ("h3", ""), ("h4", "p:colon")]


def _hydra(tmp_path: Path, target: str, port: int, service: str, *extra: str, combos: list[tuple[str, str]] = COMBOS,
           env_extra: Optional[dict[str, str]] = None) -> tuple[str, set[tuple[str, str]]]:
    """Run hydra over ``combos`` (one pair per login: hydra stops trying a login once one of its
    passwords works, and here every one does); its output and the pairs it says it tried."""
    path = tmp_path / "combos.txt"
    path.write_text("".join(f"{u}:{p}\n" for u, p in combos))
    # -I: ignore/never wait for a restore file; cwd is tmp_path, where hydra keeps it.
    r = _run([_tool("hydra"), "-I", "-V", "-C", str(path), "-s", str(port), "-t", "4", "-w", "5",
              *extra, target, service], tmp_path, timeout=60, env_extra=env_extra)
    out = r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8", "replace")
    tried = set(re.findall(r'\[ATTEMPT\] target \S+ - login "(.*?)" - pass "(.*?)"', out))
    return out, tried


@pytest.mark.parametrize("mech", ["LOGIN", "PLAIN"])
def test_hydra_smtp_auth_every_pair_recorded(sensor, tmp_path, mech):
    users = {f"{u}-{mech}": p for u, p in COMBOS}
    out, tried = _hydra(tmp_path, "127.0.0.1", sensor.port(25), "smtp", "-m", mech, combos=list(users.items()))
    assert tried == set(users.items()), out
    # we accept any credentials, so hydra reports every pair as valid
    assert f"{len(users)} valid passwords found" in out, out
    for u, p in users.items():
        assert re.search(rf"login: {re.escape(u)}\s", out)
    auths = _all(sensor, "spampots.smtp.auth", lambda a: a.username in users, len(users))
    assert {(a.username, a.password) for a in auths} == tried
    assert {(a.mechanism, a.outcome, a.target_host) for a in auths} == {(mech, "accepted", None)}


@pytest.mark.parametrize("proxy_url,proxy_name", [("socks5://127.0.0.1:{}", "socks5"),
                                                  ("connect://127.0.0.1:{}", "http")])
def test_hydra_smtp_auth_through_our_proxy(sensor, tmp_path, proxy_url, proxy_name):
    """HYDRA_PROXY: brute-forcing a far-end MTA through the open proxy. hydra wants an address,
    so the target is TEST-NET-1; it travels only inside the proxy request (never dialled)."""
    target = "192.0.2.25" if proxy_name == "socks5" else "192.0.2.26"
    port = sensor.port(1080 if proxy_name == "socks5" else 8080)
    out, tried = _hydra(tmp_path, target, 25, "smtp", env_extra={"HYDRA_PROXY": proxy_url.format(port)})
    assert tried == set(COMBOS), out
    assert f"{len(COMBOS)} valid passwords found" in out, out
    auths = _all(sensor, "spampots.smtp.auth", lambda a: a.target_host == target, len(COMBOS))
    assert {(a.username, a.password) for a in auths} == tried
    assert all(a.target_port == 25 and a.depth == 1 for a in auths)
    reqs = _all(sensor, "spampots.proxy.request", lambda q: q.target_host == target, 1)
    assert len(reqs) >= 1 and {r.proxy for r in reqs} == {proxy_name}


def test_hydra_socks5(sensor, tmp_path):
    """hydra offers "no auth" and user/pass (05 02 00 02); a client that offers user/pass is asked
    for it, so every pair hydra tries is recorded (RFC 1929) and, any pair being accepted, hydra
    reports each login valid."""
    out, tried = _hydra(tmp_path, "127.0.0.1", sensor.port(1080), "socks5")
    assert tried == set(COMBOS), out
    assert f"{len(COMBOS)} valid passwords found" in out, out
    # hydra 9.4's socks5 module reports the empty-password pair without sending it in an RFC 1929
    # packet (none arrives here), so that pair is never recorded; every other pair is.
    sent = {(u, p) for u, p in tried if p}
    users = {u for u, _ in sent}
    reqs = _all(sensor, "spampots.proxy.request", lambda q: q.username in users, len(sent))
    assert {(q.username, q.password) for q in reqs} == sent
    assert {(q.proxy, q.auth_method) for q in reqs} == {("socks5", "userpass")}


# -- safety: nothing but loopback ---------------------------------------------------------
def _strace_ok() -> bool:
    exe = shutil.which("strace")
    return bool(exe) and subprocess.run([exe, "-o", "/dev/null", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("tool", ["proxychains4", "ncat", "msmtp", "wget", "hydra"])
def test_tools_touch_only_loopback(sensor, tmp_path, tool):
    """Every connect/sendto of the tools as we drive them, name resolution included, goes to 127.0.0.1."""
    exe = _tool(tool)
    if not _strace_ok():
        pytest.skip("strace missing or ptrace not permitted (apt-get install strace)")
    env_extra = None
    stdin = b"QUIT\r\n"
    if tool == "proxychains4":
        conf = tmp_path / "pc.conf"
        conf.write_text(f"strict_chain\nproxy_dns\n[ProxyList]\nsocks5 127.0.0.1 {sensor.port(1080)}\n")
        cmd = [exe, "-q", "-f", str(conf), _tool("swaks"), "--server", "mx.strace-pc.example:25", "--helo", "x.example",
               "--from", "s@spam.example", "--to", "v@victim.example", "--timeout", "10", "--quit-after", "EHLO"]
    elif tool == "ncat":
        cmd = [exe, "--proxy", f"127.0.0.1:{sensor.port(1080)}", "--proxy-type", "socks5", "--proxy-dns", "remote",
               "mx.strace-ncat.example", "25"]
    elif tool == "msmtp":
        cmd = [exe, "--file=/dev/null", "--host=mx.strace-msmtp.example", "--port=25", "--proxy-host=127.0.0.1",
               f"--proxy-port={sensor.port(1080)}", "--tls=off", "--auth=off", "--from=m@spam.example",
               "--timeout=10", "v@victim.example"]
        stdin = _msmtp_message("strace-msmtp")
    elif tool == "wget":
        cmd = [exe, "-q", "-O", "/dev/null", "-T", "5", "--tries=1", "-e", "use_proxy=on",
               "-e", f"https_proxy=http://127.0.0.1:{sensor.port(8080)}", "https://strace-wget.example/"]
    else:
        combos = tmp_path / "c.txt"
        combos.write_text("s1:s2\n")
        cmd = [exe, "-I", "-C", str(combos), "-s", "25", "-w", "5", "192.0.2.27", "smtp"]
        env_extra = {"HYDRA_PROXY": f"socks5://127.0.0.1:{sensor.port(1080)}"}
    trace = tmp_path / "trace.txt"
    r = _run([shutil.which("strace"), "-f", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(trace), *cmd],
             tmp_path, input_bytes=stdin, timeout=45, env_extra=env_extra)
    text = trace.read_text()
    assert "AF_INET" in text, (r.returncode, r.stderr, text)  # it did talk to the sensor
    inet = re.findall(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', text)
    addrs = {a or b for a, b in inet}
    assert addrs == {"127.0.0.1"}, text
    assert "htons(53)" not in text, text
