"""Raw-bytes abuse clients: SOCKS4/4a/5, HTTP CONNECT and absolute GET, SMTP,
slow-loris and garbage, as an abuser's tool would send them.

Every client takes an open :class:`Conn` and a :class:`~.mix.Plan` and returns
a :class:`Result` saying what the server acknowledged: messages count only when
the ``250`` after DATA was read, recipients only when their ``RCPT`` got a
``250``. Anything unexpected raises :class:`ClientError` naming the stage.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import struct
import time
from dataclasses import dataclass
from typing import Optional

from .mix import Plan

CRLF = b"\r\n"


class ClientError(Exception):
    """The server did not answer as a real open proxy / relay would."""

    def __init__(self, stage: str, detail: str = "") -> None:
        super().__init__(f"{stage}: {detail}" if detail else stage)
        self.stage = stage


@dataclass(slots=True)
class Result:
    outcome: str
    messages: int = 0
    recipients: int = 0
    message_bytes: int = 0
    closed_by_server: bool = False


class Conn:
    """A stream connection with the few reads the clients need, each under a timeout."""

    __slots__ = ("r", "w", "timeout")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.r = reader
        self.w = writer
        self.timeout = timeout

    def write(self, data: bytes) -> None:
        self.w.write(data)

    async def drain(self) -> None:
        await asyncio.wait_for(self.w.drain(), self.timeout)

    async def exactly(self, n: int, stage: str) -> bytes:
        try:
            return await asyncio.wait_for(self.r.readexactly(n), self.timeout)
        except asyncio.IncompleteReadError as exc:
            raise ClientError(stage, f"closed after {len(exc.partial)} of {n} bytes") from None

    async def line(self, stage: str) -> bytes:
        data = await asyncio.wait_for(self.r.readline(), self.timeout)
        if not data.endswith(b"\n"):
            raise ClientError(stage, "connection closed" if not data else f"partial line {data[:60]!r}")
        return data

    async def smtp_reply(self, stage: str) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            line = await self.line(stage)
            lines.append(line)
            if len(line) < 4 or not line[:3].isdigit():
                raise ClientError(stage, f"not an SMTP reply: {line[:60]!r}")
            if line[3:4] != b"-":
                return int(line[:3]), lines

    async def http_head(self, stage: str) -> tuple[int, dict[bytes, bytes]]:
        try:
            head = await asyncio.wait_for(self.r.readuntil(b"\r\n\r\n"), self.timeout)
        except asyncio.IncompleteReadError as exc:
            raise ClientError(stage, f"closed in the response head ({len(exc.partial)} bytes)") from None
        lines = head.split(CRLF)
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ClientError(stage, f"bad status line {lines[0][:60]!r}")
        headers = {}
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def to_eof(self, timeout: Optional[float] = None, cap: int = 1 << 20) -> bool:
        """Read and discard until the server closes; True if it did within the time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        got = 0
        try:
            while got < cap:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                chunk = await asyncio.wait_for(self.r.read(65536), left)
                if not chunk:
                    return True
                got += len(chunk)
        except (asyncio.TimeoutError, TimeoutError):
            return False
        except (ConnectionError, OSError):
            return True
        return False

    def half_close(self) -> None:
        if self.w.can_write_eof():
            try:
                self.w.write_eof()
            except (OSError, RuntimeError):
                pass

    def close(self) -> None:
        self.w.close()


# -- wire formats -------------------------------------------------------------------------
def socks4_request(host: str, port: int, user: bytes, *, cmd: int = 1) -> bytes:
    try:
        ip = ipaddress.IPv4Address(host).packed
        tail = b""
    except ValueError:  # SOCKS4a: 0.0.0.x and the name after the user id
        ip, tail = b"\0\0\0\x01", host.encode() + b"\0"
    return bytes((4, cmd)) + port.to_bytes(2, "big") + ip + user + b"\0" + tail


def socks5_request(host: str, port: int, *, cmd: int = 1, atyp: Optional[int] = None) -> bytes:
    try:
        addr = ipaddress.ip_address(host)
        a = (1 if addr.version == 4 else 4).to_bytes(1, "big") + addr.packed
    except ValueError:
        name = host.encode()
        a = b"\x03" + bytes((len(name),)) + name
    if atyp is not None:
        a = bytes((atyp,)) + a[1:]
    return bytes((5, cmd, 0)) + a + port.to_bytes(2, "big")


def http_connect_request(host: str, port: int, *, auth: Optional[tuple[str, str]] = None,
                         version: bytes = b"HTTP/1.1") -> bytes:
    authority = f"{host}:{port}".encode()
    head = b"CONNECT " + authority + b" " + version + CRLF + b"Host: " + authority + CRLF
    if auth is not None:
        cred = base64.b64encode(f"{auth[0]}:{auth[1]}".encode())
        head += b"Proxy-Authorization: Basic " + cred + CRLF
    return head + b"User-Agent: Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)" + CRLF + CRLF


def client_hello(sni: str, rng: random.Random) -> bytes:
    """A TLS 1.2-style ClientHello record with SNI and ALPN (what a browser or mailer sends first)."""
    def ext(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    name = sni.encode()
    server_name = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    alpn_list = b"".join(bytes((len(p),)) + p for p in (b"h2", b"http/1.1"))
    exts = ext(0, server_name) + ext(16, struct.pack("!H", len(alpn_list)) + alpn_list)
    exts += ext(43, b"\x04\x03\x04\x03\x03")  # supported_versions: TLS 1.3, 1.2
    ciphers = b"\x13\x01\x13\x02\xc0\x2b\xc0\x2f\x00\x9c\x00\x2f"
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x00" + struct.pack("!H", len(ciphers)) + ciphers
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def proxy_header(version: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A HAProxy PROXY protocol v1 or v2 header (TCP over IPv4 or IPv6)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:  # the header needs one family: map the destination
        d = ipaddress.ip_address("::ffff:" + str(d)) if s.version == 6 else ipaddress.ip_address("0.0.0.0")
    if version == "v1":
        fam = "TCP4" if s.version == 4 else "TCP6"
        return f"PROXY {fam} {s.compressed} {d.compressed} {sport} {dport}\r\n".encode()
    fam = 0x11 if s.version == 4 else 0x21
    block = s.packed + d.packed + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, fam)) + struct.pack("!H", len(block)) + block


_WORDS = (b"cheap meds online viagra cialis rolex replica discount offer limited time click here "
          b"unsubscribe free money loan approved mortgage rates stock alert hot pick investors").split()
_USERS = ("admin", "user", "test", "guest", "proxy", "root", "socks")


def message(rng: random.Random, size: int, sender: str, rcpt: str) -> bytes:
    """A spam message of about ``size`` bytes, dot-stuffed and ending in CRLF."""
    token = "%016x" % rng.getrandbits(64)
    head = (f"From: \"Offers\" <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {rng.choice(_WORDS).decode()} "
            f"{rng.choice(_WORDS).decode()} {token[:6]}\r\nMessage-ID: <{token}@{sender.split('@')[-1]}>\r\n"
            f"Date: Mon, 11 Jun 2007 10:00:00 -0300\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    lines = [head, b"..a stuffed line keeps its dot\r\n"]
    n = len(head) + 34
    while n < size:
        line = b" ".join(rng.choices(_WORDS, k=10)) + CRLF
        lines.append(line)
        n += len(line)
    return b"".join(lines)


# -- the sessions ---------------------------------------------------------------------------
async def open_tunnel(conn: Conn, plan: Plan, rng: random.Random, host: str, port: int) -> None:
    """The proxy handshake for ``plan.protocol``, asking for host:port; raises unless granted."""
    if plan.protocol in ("socks4", "socks4a"):
        conn.write(socks4_request(host, port, rng.choice(_USERS).encode()))
        reply = await conn.exactly(8, "socks4 reply")
        if reply[1] != 0x5A:
            raise ClientError("socks4 reply", f"code {reply[1]:#x}")
    elif plan.protocol == "socks5":
        conn.write(b"\x05\x01\x02" if plan.auth else b"\x05\x02\x00\x01")
        choice = await conn.exactly(2, "socks5 method")
        if choice[1] == 2:
            user, pw = rng.choice(_USERS).encode(), b"%06d" % rng.randrange(10**6)
            conn.write(b"\x01" + bytes((len(user),)) + user + bytes((len(pw),)) + pw)
            if (await conn.exactly(2, "socks5 auth"))[1] != 0:
                raise ClientError("socks5 auth", "refused")
        elif choice[1] != 0:
            raise ClientError("socks5 method", f"method {choice[1]:#x}")
        conn.write(socks5_request(host, port))
        head = await conn.exactly(5, "socks5 reply")
        if head[1] != 0:
            raise ClientError("socks5 reply", f"code {head[1]:#x}")
        rest = {1: 4 + 2 - 1, 4: 16 + 2 - 1, 3: head[4] + 2}.get(head[3])
        if rest is None:
            raise ClientError("socks5 reply", f"ATYP {head[3]:#x}")
        await conn.exactly(rest, "socks5 reply")
    elif plan.protocol == "http":
        auth = (rng.choice(_USERS), "pass%d" % rng.randrange(1000)) if plan.auth else None
        conn.write(http_connect_request(host, port, auth=auth))
        status, _ = await conn.http_head("http connect")
        if status != 200:
            raise ClientError("http connect", f"status {status}")
    else:
        raise ValueError(f"no tunnel for {plan.protocol}")


async def smtp_dialogue(conn: Conn, plan: Plan, rng: random.Random, pipelining: bool, result: Result) -> None:
    code, _ = await conn.smtp_reply("smtp banner")
    if code != 220:
        raise ClientError("smtp banner", str(code))
    helo = f"{rng.choice(('user', 'pc', 'host', 'desktop'))}-{rng.randrange(10**4)}.dsl.example.net".encode()
    conn.write(b"EHLO " + helo + CRLF)
    code, lines = await conn.smtp_reply("smtp ehlo")
    if code != 250:
        raise ClientError("smtp ehlo", str(code))
    pipe = pipelining and any(ln[4:].strip().upper() == b"PIPELINING" for ln in lines)
    domain = rng.choice(("hotmail.com", "yahoo.com.br", "terra.com.br", "uol.com.br", "gmail.com"))
    for i, m in enumerate(plan.messages):
        sender = f"promo{rng.randrange(10**5)}@offers{rng.randrange(100)}.example.com"
        rcpts = [f"victim{rng.randrange(10**7)}@{domain}" for _ in range(m.rcpts)]
        cmds = [b"MAIL FROM:<" + sender.encode() + b">" + CRLF]
        cmds += [b"RCPT TO:<" + r.encode() + b">" + CRLF for r in rcpts]
        cmds.append(b"DATA" + CRLF)
        codes = []
        if pipe:
            conn.write(b"".join(cmds))
            for _ in cmds:
                codes.append((await conn.smtp_reply("smtp envelope"))[0])
        else:
            for c in cmds:
                conn.write(c)
                codes.append((await conn.smtp_reply("smtp envelope"))[0])
        if codes[0] != 250:
            raise ClientError("smtp mail", str(codes[0]))
        accepted = sum(1 for c in codes[1:-1] if c == 250)
        if codes[-1] != 354:
            continue  # no recipient taken: the server refused DATA
        body = message(rng, m.size, sender, rcpts[0])
        conn.write(body + b"." + CRLF)
        code, _ = await conn.smtp_reply("smtp data")
        if code == 250:
            result.messages += 1
            result.recipients += accepted
            result.message_bytes += len(body)
    conn.write(b"QUIT" + CRLF)
    try:
        await conn.smtp_reply("smtp quit")
    except (ClientError, ConnectionError):
        pass  # some servers close without the 221
    result.outcome = "smtp"


async def http_get(conn: Conn, url: str) -> None:
    host = url.split("://", 1)[1].split("/", 1)[0]
    conn.write(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/4.0 (compatible; MSIE 6.0; "
               f"Windows NT 5.1)\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode())
    status, headers = await conn.http_head("http get")
    if not 200 <= status < 600:
        raise ClientError("http get", f"status {status}")
    length = headers.get(b"content-length")
    if length is not None and length.isdigit():
        await conn.exactly(int(length), "http get body")
    else:
        await conn.to_eof()


async def other_payload(conn: Conn, plan: Plan, rng: random.Random) -> None:
    """What abusers send through a tunnel to a non-mail port."""
    port, host = plan.target_port, plan.target_host
    if port == 443:
        conn.write(client_hello(host, rng))
    elif port == 80:
        conn.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    elif port == 6667:
        nick = "x%05d" % rng.randrange(10**5)
        conn.write(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN #bots\r\n".encode())
    else:
        conn.write(b"USER spam%d\r\nPASS %d\r\n" % (rng.randrange(1000), rng.randrange(10**6)))
    await conn.drain()
    if port != 80:  # HTTP answers and closes by itself; the others wait for our end
        conn.half_close()
    await conn.to_eof(timeout=min(conn.timeout, 10.0))


def error_bytes(plan: Plan, rng: random.Random) -> bytes:
    """A malformed request for plan.variant: a protocol error on the server, no proxy request."""
    host, kind = plan.target_host or "mx1.hotmail.com", plan.variant
    port = plan.target_port or 25
    if plan.protocol == "socks4":
        if kind == "long_userid":  # no NUL within the line-length limit
            return socks4_request("192.0.2.25", port, b"u" * 8192)[:-1]
        return socks4_request("192.0.2.25", port, b"user")[:4]  # truncated
    if plan.protocol == "socks4a":
        if kind == "empty_host":
            return socks4_request("x", port, b"user")[:-2] + b"\0"
        return socks4_request(host, port, b"user")[:-3]
    if plan.protocol == "socks5":
        hello = b"\x05\x01\x00"
        if kind == "no_method":
            return b"\x05\x01\x80"
        if kind == "bad_version":
            return hello + b"\x04" + socks5_request(host, port)[1:]
        if kind == "bad_atyp":
            return hello + socks5_request(host, port, atyp=7)
        if kind == "bad_command":
            return hello + socks5_request(host, port, cmd=9)
        return hello + socks5_request(host, port)[:6]  # truncated
    authority = f"{host}:{port}".encode()
    if kind == "bad_request_line":
        return b"CONNECT " + authority + CRLF + CRLF
    if kind == "no_port":
        return b"CONNECT " + host.encode() + b" HTTP/1.1" + CRLF + CRLF
    if kind == "bad_version":
        return b"CONNECT " + authority + b" HTTP/2.0" + CRLF + CRLF
    return b"CONNECT " + authority + b" HTTP/1.1" + CRLF + b"Host: " + authority[:3]  # truncated


async def error_session(conn: Conn, plan: Plan, rng: random.Random) -> None:
    conn.write(error_bytes(plan, rng))
    await conn.drain()
    conn.half_close()
    await conn.to_eof(timeout=min(conn.timeout, 10.0))


def _opening(plan: Plan, rng: random.Random) -> bytes:
    """The first bytes a well-behaved client of plan.protocol sends."""
    host, port = plan.target_host or rng.choice(("mx1.hotmail.com", "mx.terra.com.br")), plan.target_port or 25
    if plan.protocol in ("socks4", "socks4a"):
        return socks4_request(host if plan.protocol == "socks4a" else "192.0.2.25", port, b"user")
    if plan.protocol == "socks5":
        return b"\x05\x01\x00" + socks5_request("m" * 240 + ".example.com", port)
    if plan.protocol == "http":
        return http_connect_request(host, port)[:-2]  # the end of the head never comes
    return b"EHLO " + b"h" * 64


def _loris_bytes(plan: Plan, rng: random.Random):
    yield from _opening(plan, rng)
    while True:  # endless headers / an endless line: only the server's limits end it
        yield from (b"X-Pad: " + b"a" * 20 + CRLF) if plan.protocol == "http" else b"a"


async def slowloris(conn: Conn, plan: Plan, rng: random.Random, interval: float, stop: asyncio.Event,
                    result: Result) -> None:
    """One byte every ``interval`` s until the server closes (or the run ends)."""
    for b in _loris_bytes(plan, rng):
        if conn.r.at_eof() or conn.w.is_closing():
            break
        try:
            conn.write(bytes((b,)))
            await conn.drain()
        except (ConnectionError, OSError):
            break
        # wait for the interval, the server's close, or the end of the run
        try:
            data = await asyncio.wait_for(_read_or_stop(conn, stop), interval)
        except (asyncio.TimeoutError, TimeoutError):
            continue
        if data is None:  # the run ended
            return
        if not data:
            break
    result.closed_by_server = True


async def _read_or_stop(conn: Conn, stop: asyncio.Event) -> Optional[bytes]:
    """Bytes from the server (b"" at EOF), or None once ``stop`` is set."""
    if stop.is_set():
        return None
    reader = asyncio.ensure_future(conn.r.read(65536))
    waiter = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait((reader, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (reader, waiter):
            if not t.done():
                t.cancel()
    if reader in done:
        try:
            return reader.result()
        except (ConnectionError, OSError):
            return b""
    return None


async def garbage(conn: Conn, plan: Plan, rng: random.Random) -> None:
    """Random bytes, a truncated opening, or a granted tunnel followed by junk."""
    if plan.variant == "tunnel":
        port = rng.choice((25, 80, 443, 6667))
        await open_tunnel(conn, plan, rng, plan.target_host or "mx1.hotmail.com", port)
        if port == 25:
            await conn.smtp_reply("smtp banner")
        junk = rng.randbytes(rng.randrange(1, 2048))
    elif plan.variant == "truncated":
        first = _opening(plan, rng)
        junk = first[: rng.randrange(2, max(3, len(first)))]
    else:
        # a first byte that no protocol starts with, so the listener cannot take it for one
        junk = bytes((rng.randrange(0x80, 0x100),)) + rng.randbytes(rng.randrange(0, 4096))
    conn.write(junk)
    await conn.drain()
    conn.half_close()
    await conn.to_eof(timeout=min(conn.timeout, 5.0))


async def run_plan(conn: Conn, plan: Plan, rng: random.Random, *, pipelining: bool = True,
                   loris_interval: float = 5.0, stop: Optional[asyncio.Event] = None) -> Result:
    """Carry out one session; returns what the server acknowledged."""
    result = Result(plan.outcome)
    if plan.outcome == "slowloris":
        await slowloris(conn, plan, rng, loris_interval, stop or asyncio.Event(), result)
        return result
    if plan.outcome == "garbage":
        await garbage(conn, plan, rng)
        return result
    if plan.outcome == "error":
        await error_session(conn, plan, rng)
        return result
    if plan.protocol == "smtp":
        await smtp_dialogue(conn, plan, rng, pipelining, result)
        return result
    if plan.outcome == "get":
        await http_get(conn, plan.variant)
        return result
    await open_tunnel(conn, plan, rng, plan.target_host, plan.target_port)
    if plan.outcome == "smtp":
        await smtp_dialogue(conn, plan, rng, pipelining, result)
    else:
        await other_payload(conn, plan, rng)
    return result

