"""Which face a sensor shows, chosen deterministically from its id.

Two sensors must not share one fixed banner (a single string is a trivial
fingerprint across the whole network), yet one sensor must look the same
across restarts. So every choice is a stable hash of the sensor id; the
configuration can pin any of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .base import Persona

SMTP_STYLES = ("postfix", "exim", "sendmail", "exchange")
#: HTTP proxies a sensor's unpinned listeners may be (picked from the sensor id)
HTTP_STYLES = ("squid", "tinyproxy", "ccproxy", "apache", "analogx", "proxyplus")
#: every proxy product a listener can play (``Persona.http_style``)
PROXY_STYLES = HTTP_STYLES + ("wingate", "dante", "mydoom")

#: Products that speak only SOCKS on their port, with the versions they speak. Other
#: first bytes are answered as the product does (see ``dispatch.py``), so scanners
#: such as nmap settle on SOCKS. The rest serve any protocol on any port: CCProxy,
#: WinGate and 3proxy do so themselves, and for single-protocol HTTP proxies a SOCKS
#: greeting is a free capture that costs no fingerprint nmap looks for.
@dataclass(frozen=True, slots=True)
class SocksOnly:
    speaks: frozenset[str]  # "socks4", "socks5"
    refusal: bytes = b""  # sent to any other first byte before the close


SOCKS_ONLY: dict[str, SocksOnly] = {
    # Dante reads one version byte; anything but 4 or 5 is dropped without a word.
    "dante": SocksOnly(frozenset({"socks4", "socks5"})),
    # MyDoom's backdoor proxy (3127) speaks SOCKS4 and refuses anything else with a
    # SOCKS4-looking reply (nmap-service-probes, probe "mydoom": "MyDoom virus backdoor").
    "mydoom": SocksOnly(frozenset({"socks4"}), b"\x04\x5b" + bytes(6)),
}

#: The default persona of each of the talk's ports (README.md gives the reasons).
PORT_PERSONAS: dict[int, str] = {
    1080: "dante",
    3127: "mydoom",
    8080: "ccproxy",
    80: "apache",
    3128: "squid",
    8000: "tinyproxy",
    6588: "analogx",
    4480: "proxyplus",
    3382: "wingate",
    81: "squid",
}

#: Releases a product is shown as, one per sensor (``Persona.variant``): two sensors
#: playing Squid need not share one version string. Only releases whose pages and
#: headers match our templates are listed.
VERSIONS: dict[str, tuple[str, ...]] = {
    "squid": ("5.7", "5.6", "5.5"),
    "tinyproxy": ("1.11.1", "1.11.0"),
    "apache": ("2.4.57", "2.4.56", "2.4.59", "2.4.62"),
    "wingate": ("6.6.4 (Build 1432)", "7.0.2 (Build 1607)", "7.2.1 (Build 1816)"),
}


def version(style: str, variant: int) -> str:
    """The release of ``style`` this sensor shows ("" for products we show unversioned)."""
    options = VERSIONS.get(style, ())
    return options[variant % len(options)] if options else ""
JUDGE_STYLES = ("azenv", "plain", "table")

# Host names like the ones small offices and home servers use for their MTA.
_HOST_PREFIXES = ("mail", "smtp", "mx", "mx1", "server", "srv", "gw", "correio", "office", "host")
_HOST_DOMAINS = (
    "localdomain", "lan", "home", "local", "intranet", "office.local",
    "corp.local", "mshome.net", "workgroup", "internal",
)


def _pick(sensor_id: str, what: str, options: tuple[str, ...]) -> str:
    digest = hashlib.sha256(f"{what}\0{sensor_id}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def choose(
    sensor_id: str,
    *,
    smtp_style: str = "",
    hostname: str = "",
    http_style: str = "",
    judge_style: str = "",
    smtp_tls: bool = True,
    smtp_auth: bool = True,
) -> Persona:
    """The sensor's persona: configured values win, the rest comes from the id."""
    if not hostname:
        n = int.from_bytes(hashlib.sha256(f"n\0{sensor_id}".encode()).digest()[:2], "big") % 90 + 1
        prefix = _pick(sensor_id, "host", _HOST_PREFIXES)
        hostname = f"{prefix}{n if prefix.startswith(('server', 'srv', 'host')) else ''}.{_pick(sensor_id, 'dom', _HOST_DOMAINS)}"
    variant = int.from_bytes(hashlib.sha256(f"v\0{sensor_id}".encode()).digest()[:2], "big")
    return Persona(
        variant=variant,
        smtp_style=smtp_style or _pick(sensor_id, "smtp", SMTP_STYLES),
        hostname=hostname,
        http_style=http_style or _pick(sensor_id, "http", HTTP_STYLES),
        judge_style=judge_style or _pick(sensor_id, "judge", JUDGE_STYLES),
        smtp_tls=smtp_tls,
        smtp_auth=smtp_auth,
    )
