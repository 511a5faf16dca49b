"""Passive OS fingerprints of a source from the SYN of its connection (sans-IO).

Linux keeps the SYN of an accepted connection when the listener asks (``TCP_SAVE_SYN``);
one ``getsockopt(TCP_SAVED_SYN)`` after accept returns its IP and TCP headers. This module
turns those bytes into a p0f v3 signature, written as p0f writes its ``raw_sig``
(``ver:ttl+dist:olen:mss:wsize,scale:olayout:quirks:pclass``), and classifies such a
signature with p0f's own database (``p0f.fp``, Debian's ``p0f`` package; never copied here),
following p0f's matching rules: same option layout; quirks equal, or differing only by
``df``/``id+`` gone or ``id-``/``ecn`` added (a fuzzy match); TTL within 35 hops below the
signature's initial TTL (else fuzzy); MSS, scale and window equal or wildcarded; a specific
signature before a generic one before a fuzzy one.

Every byte here comes from an attacker's packet: a header that does not parse gives None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

TCP_SAVE_SYN = 27  # linux/tcp.h
TCP_SAVED_SYN = 28
SAVED_SYN_MAX = 512  # IPv6 header (40) + TCP header with options (60), with room to spare

P0F_DB = Path("/etc/p0f/p0f.fp")  # Debian's p0f package
MAX_DIST = 35  # p0f: a larger gap between initial and observed TTL is a fuzzy match

# p0f's quirk names, in the order its raw_sig prints them.
QUIRKS = ("df", "id+", "id-", "ecn", "0+", "flow", "seq-", "ack+", "ack-", "uptr+", "urgf+",
          "pushf+", "ts1-", "ts2+", "opt+", "exws", "bad")
_OPT_NAMES = {1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}


def initial_ttl(ttl: int) -> int:
    """The usual initial TTL just above an observed one (p0f's guess)."""
    return 32 if ttl <= 32 else 64 if ttl <= 64 else 128 if ttl <= 128 else 255


@dataclass(frozen=True)
class SynSig:
    ver: int  # 4 or 6
    ttl: int  # observed TTL / hop limit
    olen: int  # IPv4 options length
    mss: int  # 0: no MSS option
    win: int
    scale: int  # -1: no window scale option
    olayout: str  # e.g. "mss,sok,ts,nop,ws"
    quirks: frozenset[str]
    pclass: str  # "0" no payload, "+" payload

    @property
    def raw(self) -> str:
        """p0f's raw_sig notation."""
        if self.mss and self.win and self.win % self.mss == 0:
            win = f"mss*{self.win // self.mss}"
        else:
            win = str(self.win)
        quirks = ",".join(q for q in QUIRKS if q in self.quirks)
        ittl = initial_ttl(self.ttl)
        return (f"{self.ver}:{self.ttl}+{ittl - self.ttl}:{self.olen}:{self.mss}:{win},"
                f"{max(self.scale, 0)}:{self.olayout}:{quirks}:{self.pclass}")


def parse_syn(data: bytes) -> Optional[SynSig]:
    """The signature of a saved SYN (IP header + TCP header), or None if it does not parse."""
    if not data:
        return None
    ver = data[0] >> 4
    quirks: set[str] = set()
    if ver == 4:
        ihl = (data[0] & 15) * 4
        if ihl < 20 or len(data) < ihl + 20:
            return None
        tos, total, ip_id, frag, ttl, proto = struct.unpack_from("!xBHHHBB", data)
        if proto != 6:
            return None
        if frag & 0x4000:
            quirks.add("df")
            if ip_id:
                quirks.add("id+")
        elif not ip_id:
            quirks.add("id-")
        if frag & 0x8000:
            quirks.add("0+")  # the reserved "evil" bit
        if tos & 3:
            quirks.add("ecn")
        olen, tcp = ihl - 20, ihl
        ip_payload = total - ihl
    elif ver == 6:
        if len(data) < 60:
            return None
        first, plen, nxt, ttl = struct.unpack_from("!IHBB", data)
        if nxt != 6:
            return None  # extension headers: not taken apart
        if first & 0xFFFFF:
            quirks.add("flow")
        if (first >> 20) & 3:
            quirks.add("ecn")
        olen, tcp, ip_payload = 0, 40, plen
    else:
        return None
    if len(data) < tcp + 20:
        return None
    _sp, _dp, seq, ack, off_flags, win, _sum, urg = struct.unpack_from("!HHIIHHHH", data, tcp)
    doff = (off_flags >> 12) * 4
    flags = off_flags & 0x1FF
    if doff < 20 or len(data) < tcp + doff:
        return None
    if not seq:
        quirks.add("seq-")
    if flags & 0x10:
        if not ack:
            quirks.add("ack-")
    elif ack:
        quirks.add("ack+")
    if flags & 0x20:
        quirks.add("urgf+")
    elif urg:
        quirks.add("uptr+")
    if flags & 0x08:
        quirks.add("pushf+")
    if flags & 0x40 or flags & 0x80:  # ECE / CWR on a SYN
        quirks.add("ecn")
    mss, scale, layout = _options(data[tcp + 20: tcp + doff], quirks)
    pclass = "+" if ip_payload - doff > 0 else "0"
    return SynSig(ver, ttl, olen, mss, win, scale, ",".join(layout), frozenset(quirks), pclass)


def _options(opts: bytes, quirks: set[str]) -> tuple[int, int, list[str]]:
    mss, scale, layout = 0, -1, []
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:  # EOL: the rest is padding; p0f notes how much and whether it is zero
            pad = opts[i + 1:]
            layout.append(f"eol+{len(pad)}")
            if any(pad):
                quirks.add("opt+")
            break
        if kind == 1:
            layout.append("nop")
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            quirks.add("bad")
            break
        length = opts[i + 1]
        body = opts[i + 2: i + length]
        layout.append(_OPT_NAMES.get(kind, f"?{kind}"))
        if kind == 2 and length == 4:
            mss = struct.unpack("!H", body)[0]
        elif kind == 3 and length == 3:
            scale = body[0]
            if scale > 14:
                quirks.add("exws")
        elif kind == 8 and length == 10:
            ts1, ts2 = struct.unpack("!II", body)
            if not ts1:
                quirks.add("ts1-")
            if ts2:
                quirks.add("ts2+")
        elif kind in (2, 3, 8):
            quirks.add("bad")  # a known option of the wrong length
        i += length
    return mss, scale, layout


def parse_raw(raw: str) -> Optional[SynSig]:
    """A recorded raw signature (SynSig.raw) back into its fields; None if malformed."""
    try:
        ver, ttl, olen, mss, wsize, olayout, quirks, pclass = raw.split(":")
        ttl_obs = int(ttl.split("+")[0])
        win_text, scale = wsize.rsplit(",", 1)
        mss_n = int(mss)
        win = mss_n * int(win_text[4:]) if win_text.startswith("mss*") else int(win_text)
        return SynSig(int(ver), ttl_obs, int(olen), mss_n, win, int(scale), olayout,
                      frozenset(q for q in quirks.split(",") if q), pclass)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Ref:
    label: str  # e.g. "s:win:Windows:7 or 8"
    generic: bool
    ver: int  # -1: any
    ittl: int
    bad_ttl: bool
    olen: int
    mss: int  # -1: any
    win_type: str  # "n" exact, "mss", "mtu", "%" modulo, "*" any
    win: int
    scale: int  # -1: any
    olayout: str
    quirks: frozenset[str]
    pclass: str  # "*" any


class P0fDb:
    """The [tcp:request] signatures of a p0f.fp file."""

    def __init__(self, refs: list[_Ref], source: str = "") -> None:
        self.refs = refs
        self.source = source
        self._by_layout: dict[str, list[_Ref]] = {}
        for r in refs:
            self._by_layout.setdefault(r.olayout, []).append(r)

    @classmethod
    def load(cls, path: Union[str, Path] = P0F_DB) -> "P0fDb":
        return cls.parse(Path(path).read_text("utf-8", "replace"), source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "") -> "P0fDb":
        refs: list[_Ref] = []
        section, label = "", ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[tcp:request]" or "=" not in line:
                continue
            key, value = (x.strip() for x in line.split("=", 1))
            if key == "label":
                label = value
            elif key == "sig" and label:
                ref = _parse_ref(label, value)
                if ref is not None:
                    refs.append(ref)
        return cls(refs, source)

    def classify(self, sig: SynSig) -> tuple[str, bool]:
        """(label, fuzzy) of the best match, ("", False) for none. The label is p0f's name and
        flavor, e.g. "Windows 7 or 8"."""
        generic: Optional[_Ref] = None
        fuzzy: Optional[_Ref] = None
        for ref in self._by_layout.get(sig.olayout, ()):
            is_fuzzy = False
            ref_quirks = ref.quirks
            if ref.ver == -1:  # a signature for both versions: drop the other version's quirks
                ref_quirks = ref_quirks - ({"flow"} if sig.ver == 4 else {"df", "id+", "id-"})
            if ref.ver != -1 and ref.ver != sig.ver:
                continue
            if ref_quirks != sig.quirks:
                deleted, added = ref_quirks - sig.quirks, sig.quirks - ref_quirks
                if fuzzy is not None or deleted - {"df", "id+"} or added - {"id-", "ecn"}:
                    continue
                is_fuzzy = True
            if ref.olen != sig.olen:
                continue
            if ref.bad_ttl:
                if ref.ittl < sig.ttl:
                    continue
            elif ref.ittl < sig.ttl or ref.ittl - sig.ttl > MAX_DIST:
                is_fuzzy = True
            if ref.mss not in (-1, sig.mss) or ref.scale not in (-1, max(sig.scale, 0)):
                continue
            if ref.pclass not in ("*", sig.pclass) or not _window_ok(ref, sig):
                continue
            if not is_fuzzy:
                if not ref.generic:
                    return _short(ref.label), False
                generic = generic or ref
            elif fuzzy is None:
                fuzzy = ref
        if generic is not None:
            return _short(generic.label), False
        if fuzzy is not None:
            return _short(fuzzy.label), True
        return "", False


def _short(label: str) -> str:
    """p0f's "s:unix:Linux:3.11 and newer" as "Linux 3.11 and newer"."""
    parts = label.split(":", 3)
    return " ".join(p for p in parts[2:] if p) if len(parts) >= 3 else label


def _window_ok(ref: _Ref, sig: SynSig) -> bool:
    if ref.win_type == "*":
        return True
    if ref.win_type == "n":
        return ref.win == sig.win
    if ref.win_type == "%":
        return ref.win > 0 and sig.win % ref.win == 0
    header = 40 if sig.ver == 4 else 60
    if ref.win_type == "mss":
        return sig.mss > 0 and sig.win == sig.mss * ref.win
    return sig.mss > 0 and sig.win == (sig.mss + header) * ref.win  # "mtu"


def _int_or_any(text: str) -> int:
    return -1 if text == "*" else int(text)


def _parse_ref(label: str, sig: str) -> Optional[_Ref]:
    try:
        ver, ittl, olen, mss, wsize, olayout, quirks, pclass = sig.split(":")
        win_text, scale = wsize.split(",")
        if win_text == "*":
            win_type, win = "*", 0
        elif win_text.startswith("mss*"):
            win_type, win = "mss", int(win_text[4:])
        elif win_text.startswith("mtu*"):
            win_type, win = "mtu", int(win_text[4:])
        elif win_text.startswith("%"):
            win_type, win = "%", int(win_text[1:])
        else:
            win_type, win = "n", int(win_text)
        bad_ttl = ittl.endswith("-")
        return _Ref(label, label.startswith("g:"), _int_or_any(ver), int(ittl.split("+")[0].rstrip("-")),
                    bad_ttl, int(olen), _int_or_any(mss), win_type, win, _int_or_any(scale), olayout,
                    frozenset(q for q in quirks.split(",") if q), pclass)
    except ValueError:
        return None
