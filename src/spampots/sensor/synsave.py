"""The kernel's saved SYN of each accepted connection (Linux TCP_SAVE_SYN), as a p0f signature.

Costs one setsockopt per listener and one getsockopt per accepted connection; the parsing is
sans-IO (protocols/synfp.py). Where the option is missing (not Linux, an old kernel) nothing
is recorded and nothing fails.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Iterable, Optional

from ..protocols.synfp import SAVED_SYN_MAX, TCP_SAVE_SYN, TCP_SAVED_SYN, parse_syn


def save_syns(sockets: Iterable[Any]) -> bool:
    """Ask the kernel to keep the SYN of connections to these listening sockets; False if it cannot."""
    ok = True
    for sock in sockets:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
        except OSError:
            ok = False
    return ok


def saved_syn(transport: asyncio.BaseTransport) -> Optional[str]:
    """The p0f raw signature of this connection's SYN, or None."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, SAVED_SYN_MAX)
    except OSError:
        return None
    sig = parse_syn(raw)
    return sig.raw if sig is not None else None
