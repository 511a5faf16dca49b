"""The port -> (protocol, service) table: shipped data, extensible by the user."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

PROTOCOLS = ("SOCKS", "HTTP", "SMTP")


@dataclass(frozen=True)
class PortInfo:
    port: int
    protocol: str
    service: str


class PortTableError(ValueError):
    pass


def _parse(text: str, origin: str) -> dict[int, PortInfo]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PortTableError(f"{origin}: {e}") from None
    out: dict[int, PortInfo] = {}
    for key, val in doc.get("ports", {}).items():
        try:
            port = int(key)
        except ValueError:
            raise PortTableError(f"{origin}: port {key!r} is not a number") from None
        if not 0 < port < 65536 or not isinstance(val, dict):
            raise PortTableError(f"{origin}: bad entry for port {key}")
        proto = str(val.get("protocol", "")).upper()
        if proto not in PROTOCOLS:
            raise PortTableError(f"{origin}: port {port}: protocol must be one of {', '.join(PROTOCOLS)}")
        out[port] = PortInfo(port, proto, str(val.get("service", proto.lower())))
    return out


def load(extra: Iterable[Path] = ()) -> dict[int, PortInfo]:
    """The shipped table, then each extra file in order (later entries win)."""
    text = resources.files("spampots").joinpath("data/ports.toml").read_text()
    table = _parse(text, "spampots/data/ports.toml")
    for path in extra:
        table.update(_parse(Path(path).read_text(), str(path)))
    return table
