"""Passive SYN fingerprints: the sans-IO parser and p0f matcher, and a real sensor recording them."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spampots.protocols.synfp import P0F_DB, P0fDb, SynSig, initial_ttl, parse_raw, parse_syn

from conftest import start_sensor

needs_p0f = pytest.mark.skipif(not P0F_DB.exists(), reason="Debian's p0f package is not installed")


def syn(*, ttl: int = 128, df: bool = True, ip_id: int = 0x1234, win: int = 8192, opts: bytes = b"",
        flags: int = 0x02, seq: int = 1000, ack: int = 0, payload: bytes = b"") -> bytes:
    """An IPv4 SYN as the kernel saves it: IP header + TCP header with options."""
    opts += b"\x00" * (-len(opts) % 4)
    tcp = struct.pack("!HHIIHHHH", 40000, 25, seq, ack, ((20 + len(opts)) // 4) << 12 | flags, win, 0, 0) + opts
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ip_id, 0x4000 if df else 0, ttl, 6, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    return ip + tcp + payload


MSS = lambda v: b"\x02\x04" + struct.pack("!H", v)  # noqa: E731
WS = lambda v: b"\x03\x03" + bytes([v])  # noqa: E731
NOP, SOK = b"\x01", b"\x04\x02"
TS = lambda a, b: b"\x08\x0a" + struct.pack("!II", a, b)  # noqa: E731


def test_windows_7_syn_reads_like_p0f() -> None:
    sig = parse_syn(syn(ttl=113, win=8192, opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK))
    assert sig is not None
    assert sig.raw == "4:113+15:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0"
    assert parse_raw(sig.raw) == sig


def test_quirks_and_eol_padding() -> None:
    sig = parse_syn(syn(df=False, ip_id=0, flags=0x02 | 0x08, seq=0, ack=7,
                        opts=MSS(1400) + TS(0, 5) + b"\x00\x00\x01"))
    assert sig is not None
    assert {"id-", "seq-", "ack+", "pushf+", "ts1-", "ts2+", "opt+"} <= sig.quirks
    assert sig.olayout.endswith("eol+5")  # 3 bytes after EOL + 2 of padding to the 4-byte boundary
    assert initial_ttl(sig.ttl) == 128


def test_payload_and_bad_options() -> None:
    assert parse_syn(syn(opts=MSS(1460), payload=b"hi")).pclass == "+"  # type: ignore[union-attr]
    bad = parse_syn(syn(opts=b"\x02\x09\x05\xb4"))  # an MSS option claiming 9 bytes
    assert bad is not None and "bad" in bad.quirks


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    sig = parse_syn(data)
    assert sig is None or isinstance(sig, SynSig)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_truncated_real_syn_never_raises(tail: bytes) -> None:
    whole = syn(opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK)
    for cut in range(0, len(whole), 3):
        parse_syn(whole[:cut] + tail)


DB_TEXT = """
[tcp:request]
label = s:win:Windows:7 or 8
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0
label = g:win:Windows:NT kernel
sig   = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0
label = s:unix:Linux:3.11 and newer
sig   = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0
[tcp:response]
label = s:win:Windows:ignored
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0
"""


def test_matching_rules_specific_generic_fuzzy() -> None:
    db = P0fDb.parse(DB_TEXT)
    assert len(db.refs) == 3  # the response section is not ours
    win7 = parse_syn(syn(ttl=120, win=8192, opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK))
    assert db.classify(win7) == ("Windows 7 or 8", False)
    other_win = parse_syn(syn(ttl=120, win=65535, opts=MSS(1460) + NOP + WS(2) + NOP + NOP + SOK))
    assert db.classify(other_win) == ("Windows NT kernel", False)  # generic
    far = parse_syn(syn(ttl=60, win=8192, opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK))
    assert db.classify(far) == ("Windows 7 or 8", True)  # 68 hops: fuzzy
    no_df = parse_syn(syn(ttl=120, df=False, win=8192, opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK))
    assert db.classify(no_df) == ("Windows 7 or 8", True)  # df and id+ gone: fuzzy
    linux = parse_syn(syn(ttl=64, win=1460 * 20, opts=MSS(1460) + SOK + TS(9, 0) + NOP + WS(10)))
    assert db.classify(linux) == ("Linux 3.11 and newer", False)
    assert db.classify(parse_syn(syn(opts=MSS(1460)))) == ("", False)


@needs_p0f
def test_debian_p0f_database_loads_and_knows_windows() -> None:
    db = P0fDb.load()
    assert len(db.refs) > 50
    sig = parse_syn(syn(ttl=117, win=8192, opts=MSS(1460) + NOP + WS(8) + NOP + NOP + SOK))
    label, fuzzy = db.classify(sig)  # type: ignore[arg-type]
    assert label.startswith("Windows") and not fuzzy


def _connect(port: int, *, ttl: int, mss: int, rcvbuf: int, src: str) -> None:
    c = socket.socket()
    try:
        c.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.bind((src, 0))
        c.settimeout(10)
        c.connect(("127.0.0.1", port))
        c.recv(512)  # the banner: the session is open
        c.sendall(b"QUIT\r\n")
        c.recv(512)
    finally:
        c.close()


def test_sensor_records_each_sources_syn(tmp_path: Path) -> None:
    sp = start_sensor(tmp_path, wait_port=25)
    try:
        clients = {"127.0.5.1": (100, 1400, 16384), "127.0.5.2": (50, 1200, 65536), "127.0.5.3": (255, 536, 8192)}
        for src, (ttl, mss, rcv) in clients.items():
            _connect(sp.port(25), ttl=ttl, mss=mss, rcvbuf=rcv, src=src)
        opens = sp.events("spampots.session.open", wait_for=3, timeout=15, where=lambda e: e.src_ip in clients)
    finally:
        sp.stop()
    by_src = {e.src_ip: e.tcp_sig for e in opens}
    assert set(by_src) >= set(clients)
    sigs = {}
    for src, (ttl, mss, _rcv) in clients.items():
        sig = parse_raw(by_src[src])
        assert sig is not None, by_src[src]
        assert sig.ttl == ttl and sig.mss == mss and sig.ver == 4
        assert sig.olayout.startswith("mss")
        sigs[src] = sig
    # a different receive buffer gives a different advertised window
    assert len({s.win for s in sigs.values()}) > 1


def test_report_tables_by_os_protocol_and_campaign(tmp_path: Path) -> None:
    """The report classifies the recorded signatures with the named p0f database (--p0f-db)."""
    import json

    from spampots.analysis.cli import main as cli_main
    from test_analysis_pipeline import Capture

    db = tmp_path / "p0f.fp"
    db.write_text(DB_TEXT)
    c = Capture(tmp_path / "data")
    win = "4:113+15:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0"
    lin = "4:57+7:0:1460:mss*20,10:mss,sok,ts,nop,ws:df,id+:0"
    for i in range(3):  # a bot campaign from Windows desktops through SOCKS
        c.session(f"198.51.100.{i + 1}", 1080, tcp_sig=win).request("socks5", "mx.x.example", 25) \
            .mail(2, "socks5:mx.x.example:25", subject="Cheap pills 1")
    c.session("203.0.113.9", 25, "smtp", tcp_sig=lin).mail(5, subject="Stock tip 7")  # a server, direct
    c.session("203.0.113.10", 8080, tcp_sig="4:200+55:0:0:1024,0::ecn:0").request("http", "x.example", 80)
    c.session("203.0.113.11", 8080)  # behind a front end: no fingerprint
    c.flush()
    out = tmp_path / "r.json"
    assert cli_main(["report", "--data-dir", str(tmp_path / "data"), "--p0f-db", str(db), "--format", "json",
                     "--out", str(out), "-q", "--asn-db", "none"]) == 0
    tables = json.loads(out.read_text())["tables"]
    os_rows = {(r["os"], r["protocol"]): r["sessions"] for r in tables["source_os"]["rows"]}
    assert os_rows == {("Windows 7 or 8", "SOCKS"): 3, ("Linux 3.11 and newer", "SMTP"): 1, ("unknown", "HTTP"): 1}
    camp = [(r["os"], r["emails"]) for r in tables["campaign_os"]["rows"]]
    assert camp == [("Windows 7 or 8", 3), ("Linux 3.11 and newer", 1)]
    bad = tmp_path / "empty.fp"
    bad.write_text("[tcp:response]\n")
    assert cli_main(["report", "--data-dir", str(tmp_path / "data"), "--p0f-db", str(bad), "-q"]) == 2
