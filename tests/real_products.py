"""Run a real proxy or MTA and record how it answers a fixed set of probes.

Run as ``unshare --net --mount python3 real_products.py PRODUCT WORKDIR HOSTNAME``
(tests/test_personas_real.py does): the product lives in a network namespace of
its own whose only interface is loopback, so it cannot reach anything else even
if its configuration let it; the configuration refuses every request anyway.
Prints one JSON object: probe name -> [base64 of the bytes received, closed].

PROBES and SMTP_PROBES are shared with the test, which sends the same bytes to
the sensor.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# nmap's service probes (nmap-service-probes) and what abusers send a proxy
PROBES: dict[str, bytes] = {
    "NULL": b"",
    "GetRequest": b"GET / HTTP/1.0\r\n\r\n",
    "HTTPOptions": b"OPTIONS / HTTP/1.0\r\n\r\n",
    "RTSPRequest": b"OPTIONS / RTSP/1.0\r\n\r\n",
    "Socks4": b"\x04\x01\x00\x16\x7f\x00\x00\x01root\x00",
    "Socks5": b"\x05\x04\x00\x01\x02\x80\x05\x01\x00\x03\x0agoogle.com\x00\x50GET / HTTP/1.0\r\n\r\n",
    "CONNECT": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "AbsoluteGet": b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "Garbage": b"\x01\x02\xfe\xffgarbage\r\n\r\n",
}

# the client's lines of one SMTP dialogue; each is sent once the previous reply is complete
SMTP_PROBES: tuple[bytes, ...] = (b"EHLO probe.example\r\n", b"STARTTLS\r\n")

PORTS = {"squid": 3128, "tinyproxy": 8000, "dante": 1080, "postfix": 25}


def probe(port: int, data: bytes, wait: float = 1.5) -> tuple[bytes, bool]:
    """Send ``data``, read until the peer closes or ``wait`` seconds pass: (bytes, closed)."""
    out, closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        if data:
            s.sendall(data)
        end = time.monotonic() + wait
        try:
            while time.monotonic() < end:
                s.settimeout(max(0.05, end - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return out, closed


def _reply(s: socket.socket, wait: float) -> bytes:
    """One complete SMTP reply (its last line is 'NNN ' ...)."""
    out = b""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
        last = out.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
        if out.endswith(b"\n") and len(last) >= 4 and last[3:4] == b" ":
            break
    return out


def smtp_dialogue(port: int, wait: float = 5.0) -> list[bytes]:
    """The banner, then the reply to each of SMTP_PROBES."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        replies = [_reply(s, wait)]
        for line in SMTP_PROBES:
            s.sendall(line)
            replies.append(_reply(s, wait))
    return replies


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def _start(product: str, work: Path, host: str) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)  # squid and danted drop to their own users
    log = open(work / "stderr.log", "wb")
    if product == "squid":
        (work / "squid.conf").write_text(
            f"http_port 127.0.0.1:{PORTS['squid']}\nhttp_access deny all\nvisible_hostname {host}\n"
            f"pid_filename {work}/squid.pid\ncache_log {work}/cache.log\naccess_log none\ncache deny all\n"
            f"coredump_dir {work}\nshutdown_lifetime 0 seconds\n")
        return subprocess.Popen(["squid", "-f", str(work / "squid.conf"), "-N", "-d0"], stdout=log, stderr=log)
    if product == "tinyproxy":
        # FilterDefaultDeny with a pattern nothing matches refuses every URL; no CONNECT port is allowed
        (work / "filter").write_text("^$never^\n")
        (work / "tinyproxy.conf").write_text(
            f"Port {PORTS['tinyproxy']}\nListen 127.0.0.1\nTimeout 10\nMaxClients 20\n"
            f'Filter "{work}/filter"\nFilterURLs On\nFilterDefaultDeny Yes\nConnectPort 1\n'
            f'PidFile "{work}/tinyproxy.pid"\nLogLevel Critical\n')
        return subprocess.Popen(["tinyproxy", "-d", "-c", str(work / "tinyproxy.conf")], stdout=log, stderr=log)
    if product == "dante":
        (work / "danted.conf").write_text(
            f"logoutput: {work}/danted.log\ninternal: 127.0.0.1 port = {PORTS['dante']}\nexternal: lo\n"
            "socksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n")
        return subprocess.Popen(["danted", "-f", str(work / "danted.conf"), "-p", str(work / "danted.pid"), "-N", "1"],
                                stdout=log, stderr=log)
    if product == "postfix":
        etc = work / "etc"
        subprocess.run(["cp", "-a", "/etc/postfix/.", str(etc)], check=True)
        for d in ("spool", "lib"):
            (work / d).mkdir(exist_ok=True)
        subprocess.run(["chown", "postfix", str(work / "lib")], check=True)
        # Debian's main.cf with the snakeoil certificate (a self-signed one named after the host)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                        "-subj", f"/CN={host}", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                       check=True, capture_output=True)
        (etc / "main.cf").write_text(
            "smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)\nbiff = no\nappend_dot_mydomain = no\n"
            "readme_directory = no\ncompatibility_level = 3.6\n"
            f"smtpd_tls_cert_file = {work}/cert.pem\nsmtpd_tls_key_file = {work}/key.pem\n"
            "smtpd_tls_security_level = may\n"
            f"myhostname = {host}\nmydestination =\nrelayhost =\nmynetworks =\nalias_maps =\nalias_database =\n"
            "local_recipient_maps =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            f"queue_directory = {work}/spool\ndata_directory = {work}/lib\n"
            "smtpd_relay_restrictions = reject\nsmtpd_recipient_restrictions = reject\n"
            "default_transport = error:never delivers\nrelay_transport = error:never delivers\n"
            f"maillog_file_prefixes = {work}\nmaillog_file = {work}/maillog\n")
        # our config in place of the system's, in this mount namespace only
        subprocess.run(["mount", "--bind", str(etc), "/etc/postfix"], check=True)
        return subprocess.Popen(["postfix", "start-fg"], stdout=log, stderr=log)
    raise ValueError(product)


def _stop(product: str, proc: subprocess.Popen) -> None:
    if product == "postfix":
        subprocess.run(["postfix", "stop"], capture_output=True)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    product, work, host = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    proc = _start(product, work, host)
    try:
        port = PORTS[product]
        wait_port(port)
        if product == "postfix":
            result = {"smtp": [base64.b64encode(r).decode() for r in smtp_dialogue(port)]}
        else:
            result = {}
            for name, data in PROBES.items():
                out, closed = probe(port, data)
                result[name] = [base64.b64encode(out).decode(), closed]
    finally:
        _stop(product, proc)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
