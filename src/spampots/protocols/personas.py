"""Which face a sensor shows, chosen deterministically from its id.

Two sensors must not share one fixed banner (a single string is a trivial
fingerprint across the whole network), yet one sensor must look the same
across restarts. So every choice is a stable hash of the sensor id; the
configuration can pin any of them.
"""

from __future__ import annotations

import hashlib

from .base import Persona

SMTP_STYLES = ("postfix", "exim", "sendmail", "exchange")
HTTP_STYLES = ("squid", "tinyproxy", "ccproxy", "apache", "analogx", "proxyplus")
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
    return Persona(
        smtp_style=smtp_style or _pick(sensor_id, "smtp", SMTP_STYLES),
        hostname=hostname,
        http_style=http_style or _pick(sensor_id, "http", HTTP_STYLES),
        judge_style=judge_style or _pick(sensor_id, "judge", JUDGE_STYLES),
        smtp_tls=smtp_tls,
        smtp_auth=smtp_auth,
    )
