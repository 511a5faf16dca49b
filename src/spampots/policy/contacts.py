"""The operator's abuse contacts for `spampots notify`: a CSV of ``network,address`` rows.

``network`` is an AS (``AS64500`` or ``64500``) or a CIDR (``200.160.0.0/20``, ``2001:db8::/32``);
``address`` one abuse mailbox. Lines starting with ``#`` and blank lines are skipped; a first row
``network,address`` is a header. Per source IP the most specific CIDR that holds it wins, else its
AS's entry: so an entry for a customer's block overrides the AS's desk. A network's recipients are
the union over its IPs. The file is the operator's, but checked as if it were not: a bad row is an
error naming its line, and an address can never carry a second header or recipient.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

# A plain addr-spec: no display name, comment, quote, list or line break (nothing to inject).
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+")
_AS = re.compile(r"(?:AS)?([0-9]{1,10})", re.IGNORECASE)
Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ContactsError(ValueError):
    """A contacts file that cannot be used; the message names the line."""


@dataclass
class Contacts:
    by_asn: dict[int, str] = field(default_factory=dict)
    cidrs: list[tuple[Net, str]] = field(default_factory=list)  # most specific first

    def for_ip(self, ip: str, asn: Any) -> str:
        """The address for one source IP: its most specific CIDR, else its AS; '' if none."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        for net, address in self.cidrs:
            if addr.version == net.version and addr in net:
                return address
        return self.by_asn.get(asn, "") if isinstance(asn, int) else ""

    def for_ips(self, rows: list[dict[str, Any]]) -> list[str]:
        """The sorted distinct addresses for a network's IP rows (``ip``, ``as_number``)."""
        return sorted({a for r in rows if (a := self.for_ip(r["ip"], r["as_number"]))})


def valid_address(address: str) -> bool:
    return len(address) <= 254 and _ADDRESS.fullmatch(address) is not None


def load(path: Path) -> Contacts:
    """Read and check the contacts file; ContactsError on the first bad row."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ContactsError(f"cannot read it: {e}") from None
    book = Contacts()
    seen: dict[str, int] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and [c.lower() for c in cells[:2]] == ["network", "address"]:
            continue
        if len(cells) != 2:
            raise ContactsError(f"line {lineno}: want two cells, network,address")
        network, address = cells
        if not valid_address(address):
            raise ContactsError(f"line {lineno}: {address!r} is not a plain address (user@domain)")
        m = _AS.fullmatch(network)
        if m:
            key = f"AS{int(m.group(1))}"
        else:
            try:
                net = ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ContactsError(f"line {lineno}: {network!r} is neither an AS (AS64500) nor a CIDR") from None
            key = str(net)
        if key in seen:
            raise ContactsError(f"line {lineno}: {key} is already on line {seen[key]}")
        seen[key] = lineno
        if m:
            book.by_asn[int(m.group(1))] = address
        else:
            book.cidrs.append((net, address))
    book.cidrs.sort(key=lambda c: -c[0].prefixlen)  # most specific first
    return book
