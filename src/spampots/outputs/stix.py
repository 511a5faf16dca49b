"""STIX 2.1 bundles, built with the ``stix2`` library: per batch, one bundle file with

* for each source address: an ``ipv4-addr`` / ``ipv6-addr``, the ``observed-data`` that saw
  it (first and last time, how many events) and an ``indicator`` with its pattern;
* for each message body caught: a ``file`` with its SHA-256, its ``observed-data`` and an
  ``indicator`` (``[file:hashes.'SHA-256' = '…']``);

all created by one ``identity`` (the sensor's operator) and tagged ``malicious-activity``.
The file is named after the batch's first event in the store, and every id is derived from
it, so a batch sent again after a crash rewrites the same file with the same objects:
consumers see no duplicates. Files are written, then renamed; a reader sees whole bundles.
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from typing import Any, Sequence

from ..events import Event, SmtpMessage
from ..store.catalog import Line
from . import Output, need_extra, output_dir, write_atomic

REQUIRES = "stix2"  # spampots[outputs]
_NS = uuid.UUID("0b0e1c5e-1f43-4b8a-9e54-5d1e6a3c2f71")  # spampots' namespace for derived STIX ids


_HEX = frozenset("0123456789abcdef")  # a hash goes into a pattern: nothing else may


def _id(kind: str, *parts: str) -> str:
    return f"{kind}--{uuid.uuid5(_NS, '/'.join((kind,) + parts))}"


class _Seen:
    """One observable within a batch: when it was first and last seen, how often."""

    def __init__(self, ts: str) -> None:
        self.first = self.last = ts
        self.count = 0

    def add(self, ts: str) -> None:
        self.first, self.last = min(self.first, ts), max(self.last, ts)
        self.count += 1


class StixOutput(Output):
    def __init__(self, cfg: Any, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self.stix2 = need_extra(REQUIRES)
        self.dir = output_dir(cfg, data_dir)

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        first = batch[0][0]
        key = f"{first.seg.replace('/', '-')}-{first.offset}"
        bundle = self.bundle(batch, key)
        if bundle is not None:
            write_atomic(self.dir / f"bundle-{key}.json", bundle.serialize().encode())

    def bundle(self, batch: Sequence[tuple[Line, Event]], key: str) -> Any:
        """The batch's bundle (None when it holds no source and no message)."""
        sources: dict[str, _Seen] = {}
        files: dict[str, _Seen] = {}
        for _, ev in batch:
            ts = ev.ts or "1970-01-01T00:00:00Z"
            if ev.src_ip:
                sources.setdefault(ev.src_ip, _Seen(ts)).add(ts)
            if isinstance(ev, SmtpMessage) and len(ev.sha256) == 64 and all(c in _HEX for c in ev.sha256.lower()):
                files.setdefault(ev.sha256.lower(), _Seen(ts)).add(ts)
        if not sources and not files:
            return None
        s = self.stix2
        ident = s.Identity(id=_id("identity", self.cfg.identity), name=self.cfg.identity, identity_class="system",
                           created="2020-01-01T00:00:00Z", modified="2020-01-01T00:00:00Z",
                           description="spampots honeypot: open proxy and open relay")
        objects: list[Any] = [ident]
        for ip, seen in sources.items():
            sco_type = "ipv6-addr" if ipaddress.ip_address(ip).version == 6 else "ipv4-addr"
            sco = (s.IPv6Address if sco_type == "ipv6-addr" else s.IPv4Address)(value=ip)
            objects += self._observed(sco, f"[{sco_type}:value = '{ip}']", f"source of abuse {ip}", seen, key,
                                      ident.id)
        for sha, seen in files.items():
            sco = s.File(hashes={"SHA-256": sha}, name=f"{sha}.eml")
            objects += self._observed(sco, f"[file:hashes.'SHA-256' = '{sha}']", f"spam message {sha}", seen,
                                      key, ident.id)
        return s.Bundle(objects=objects, id=_id("bundle", key), allow_custom=False)

    def _observed(self, sco: Any, pattern: str, name: str, seen: _Seen, key: str, creator: str) -> list[Any]:
        s = self.stix2
        common = dict(created_by_ref=creator, created=seen.first, modified=seen.first, labels=["honeypot"])
        observed = s.ObservedData(id=_id("observed-data", key, sco.id), first_observed=seen.first,
                                  last_observed=seen.last, number_observed=seen.count, object_refs=[sco.id],
                                  **common)
        indicator = s.Indicator(id=_id("indicator", key, pattern), name=name, pattern=pattern, pattern_type="stix",
                                valid_from=seen.first, indicator_types=["malicious-activity"], **common)
        based_on = s.Relationship(id=_id("relationship", key, pattern), relationship_type="based-on",
                                  source_ref=indicator.id, target_ref=observed.id, created_by_ref=creator,
                                  created=seen.first, modified=seen.first)
        return [sco, observed, indicator, based_on]


PLUGIN = StixOutput
