"""MISP feed directory: one MISP event per day and sensor, built with PyMISP.

The directory is what a MISP instance pulls as a feed ("MISP Feed" format): one
``<uuid>.json`` per event, ``manifest.json`` (every event's metadata) and ``hashes.csv``
(the MD5 of each attribute value and its event, for MISP's feed correlation). An event's
UUID is derived from the sensor and the day, so a restart finds the same event again.

The day's event grows over the day: each batch adds the values not yet in it (deduplicated,
so a batch sent again after a crash adds nothing) and the files are replaced atomically
(written, then renamed). Attributes: ``ip-src`` (every source address), ``email-src``
(envelope and header senders), ``email-subject``, ``sha256`` (message bodies),
``hostname`` / ``ip-dst`` (the mail servers and proxy targets abusers asked for). An event
keeps at most ``max_attributes``; further values are dropped and counted in the log.

With ``url`` and ``key`` the day's event is also pushed to a MISP server through PyMISP's
API (added, then updated). That path was not tested against a live MISP.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..events import Event, ProxyRequest, SmtpMessage
from ..store.catalog import Line
from . import Output, need_extra, output_dir, output_name, write_atomic

log = logging.getLogger("spampots.outputs")
REQUIRES = "pymisp"  # spampots[outputs]
_NS = uuid.UUID("6f1c3a52-6d0e-4c43-9a55-7d1f3c5e8a10")  # spampots' namespace for derived UUIDs
_MAX_VALUE = 1024  # characters of one attribute value (subjects are the abuser's)


def event_uuid(org: str, sensor: str, day: str) -> str:
    return str(uuid.uuid5(_NS, f"misp-event/{org}/{sensor}/{day}"))


def _host(value: str) -> tuple[str, str]:
    try:
        ipaddress.ip_address(value)
        return "ip-dst", value
    except ValueError:
        return "hostname", value.lower()


def attributes(ev: Event) -> Iterator[tuple[str, str, str, str]]:
    """(type, category, value, comment) facts one event gives."""
    if ev.src_ip:
        yield "ip-src", "Network activity", ev.src_ip, f"source seen by honeypot ({ev.protocol})"
    if isinstance(ev, SmtpMessage):
        for sender in {ev.mail_from, ev.header_from or ""} - {""}:
            yield "email-src", "Payload delivery", sender, "sender of spam caught by honeypot"
        if ev.subject:
            yield "email-subject", "Payload delivery", ev.subject, ""
        if ev.sha256:
            yield "sha256", "Payload delivery", ev.sha256, "spam message body (RFC 5322) caught by honeypot"
        if ev.target_host:
            t, v = _host(ev.target_host)
            yield t, "Network activity", v, "mail server the abuser relayed to"
    elif isinstance(ev, ProxyRequest) and ev.target_host:
        t, v = _host(ev.target_host)
        yield t, "Network activity", v, f"target asked of an open proxy ({ev.proxy})"


class _Day:
    """One day's event of one sensor, in memory while it is being written."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.seen = {(a.type, a.value) for a in event.attributes}
        self.dropped = 0


class MispOutput(Output):
    def __init__(self, cfg: Any, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self.pymisp = need_extra(REQUIRES)
        self.dir = output_dir(cfg, data_dir)
        self.key = cfg.key or os.environ.get("SPAMPOTS_MISP_KEY", "")
        self.org_uuid = str(uuid.uuid5(_NS, f"org/{cfg.org}"))
        self._days: dict[tuple[str, str], _Day] = {}
        self._api: Optional[Any] = None
        self._manifest: Optional[dict[str, Any]] = None
        self._hashes: dict[str, list[str]] = {}

    def start(self) -> None:
        if self.cfg.url and self._api is None:
            self._api = self.pymisp.PyMISP(self.cfg.url, self.key, ssl=self.cfg.verify_tls, timeout=30)

    def write(self, batch: Sequence[tuple[Line, Event]]) -> None:
        touched: set[tuple[str, str]] = set()
        for _, ev in batch:
            day_key = (ev.sensor or "-", (ev.ts or "")[:10] or "unknown")
            day = self._day(*day_key)
            for type_, category, value, comment in attributes(ev):
                value = value[:_MAX_VALUE]
                if (type_, value) in day.seen:
                    continue
                if len(day.seen) >= self.cfg.max_attributes:
                    day.dropped += 1
                    continue
                day.seen.add((type_, value))
                day.event.add_attribute(type_, value, category=category, comment=comment,
                                        to_ids=type_ in ("ip-src", "sha256"), distribution=5)
                touched.add(day_key)
        for key in touched:
            self._save(self._days[key])
        if touched:
            self._write_index([self._days[k].event for k in touched])
        for key in touched:
            self._push(self._days[key].event)
        if len(self._days) > 4:  # only the newest days stay in memory; older ones are on disk
            for key in sorted(self._days, key=lambda k: k[1])[:-4]:
                del self._days[key]

    def _day(self, sensor: str, day: str) -> _Day:
        key = (sensor, day)
        if key in self._days:
            return self._days[key]
        m = self.pymisp
        uid = event_uuid(self.cfg.org, sensor, day)
        ev = m.MISPEvent()
        path = self.dir / f"{uid}.json"
        if path.exists():
            ev.load_file(path)
        else:
            ev.uuid = uid
            ev.info = f"spampots honeypot {sensor}: open proxy and open relay abuse on {day}"
            if day != "unknown":
                ev.set_date(day)
            ev.distribution = self.cfg.distribution
            ev.analysis = 1  # ongoing: the day's event grows
            ev.threat_level_id = 3  # low
            org = m.MISPOrganisation()
            org.name, org.uuid = self.cfg.org, self.org_uuid
            ev.Orgc = org
            for tag in self.cfg.tags:
                ev.add_tag(tag)
        self._days[key] = _Day(ev)
        return self._days[key]

    def _save(self, day: _Day) -> None:
        day.event.timestamp = datetime.now(timezone.utc)  # MISP pulls events whose timestamp moved
        feed = day.event.to_feed(with_distribution=True)
        write_atomic(self.dir / f"{day.event.uuid}.json", json.dumps(feed, indent=None).encode())
        if day.dropped:
            log.warning("output %s: event %s full (%d attributes), %d value(s) dropped",
                        output_name(self.cfg), day.event.uuid, self.cfg.max_attributes, day.dropped)
            day.dropped = 0

    def _write_index(self, events: list[Any]) -> None:
        """manifest.json and hashes.csv, the touched events' entries replaced."""
        if self._manifest is None:  # first write since start: what the directory holds
            mp, hp = self.dir / "manifest.json", self.dir / "hashes.csv"
            self._manifest = json.loads(mp.read_bytes()) if mp.exists() else {}
            self._hashes = {}
            if hp.exists():
                for row in hp.read_text().splitlines():
                    h, _, uid = row.partition(",")
                    self._hashes.setdefault(uid, []).append(h)
        for ev in events:
            self._manifest.update(ev.manifest)
            self._hashes[ev.uuid] = ev.attributes_hashes("md5")
        write_atomic(self.dir / "manifest.json", json.dumps(self._manifest).encode())
        write_atomic(self.dir / "hashes.csv",
                     "".join(f"{h},{uid}\n" for uid, hs in self._hashes.items() for h in hs).encode())

    def _push(self, event: Any) -> None:
        if self._api is None:
            return
        if self._api.event_exists(event.uuid):
            r = self._api.update_event(event, event_id=event.uuid)
        else:
            r = self._api.add_event(event)
        if isinstance(r, dict) and r.get("errors"):
            raise ConnectionError(f"MISP refused event {event.uuid}: {str(r['errors'])[:200]}")


PLUGIN = MispOutput
