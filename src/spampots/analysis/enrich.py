"""Offline enrichment of source IPs: AS number, AS name, country.

Sources, all local files (these machines never look anything up on the network):

* bundled default: the data that the ``geoip2fast`` package ships (MaxMind GeoLite2
  country + AS *name*, IPv4 and IPv6). It has no AS numbers, so with it alone an "AS"
  is identified by its name. IPv4 is looked up vectorised (numpy over the sorted
  ranges); IPv6 through geoip2fast's own lookup, loaded only when an IPv6 source shows up.
* the IPFire location database (Debian's ``libloc-database``, read with ``python3-location``):
  AS numbers, names and countries; the default for ``--asn-db`` when installed and readable
  from this Python (``resolve_asn_db``), also ``--asn-db FILE.db``.
* ``--asn-db FILE.mmdb``: a MaxMind GeoLite2-ASN / GeoIP2-ISP or IPinfo MMDB (``maxminddb``).
* ``--asn-db FILE.tsv[.gz]``: the iptoasn.com TSV (ip_range_start, ip_range_end,
  AS_number, country_code, AS_description), IPv4 and/or IPv6, dotted or u32 starts.
* ``--asn-db FILE[.gz]`` in RouteViews' pfx2as format (``prefix<TAB>length<TAB>AS``, one line
  per announced prefix): a dated prefix-to-AS table, for captures of years ago. Told from the
  TSV by its three columns. Nested prefixes: the longest match wins. An AS field that names
  several (``123_456``: the prefix had several origins; ``123,456``: an AS set) counts as its
  first number. It has AS numbers only: names stay unknown, countries come from the bundled data.

With ``--asn-db``, AS number and name come from that file; country comes from it when it
has one, otherwise from the bundled data. Every address gets a row: private, loopback,
reserved and the like are ``kind='private'`` with country ``--`` and AS ``private``;
addresses no database covers are ``kind='unknown'`` (country ``--``, AS ``unknown``);
strings that are not addresses are ``kind='invalid'``. Nothing is dropped.

Results are cached per IP (not per event) in ``lake/_cache/enrich-<fingerprint>.parquet``,
where the fingerprint names the databases used, so a new database starts a new cache.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import hashlib
import ipaddress
import pickle
import socket
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import progress

PRIVATE = "private"
UNKNOWN = "unknown"
INVALID = "invalid"
NO_COUNTRY = "--"

SCHEMA = pa.schema([("ip", pa.string()), ("asn", pa.int64()),
                    ("as_name", pa.string()), ("country", pa.string()), ("kind", pa.string())])

# IPv4 special-purpose blocks (RFC 6890 and friends), as [first, last] integers.
_V4_SPECIAL = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")]
_V4_SPECIAL_RANGES = np.array([(int(n.network_address), int(n.broadcast_address)) for n in _V4_SPECIAL],
                              dtype=np.uint64)


def v4_special(ints: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ints), dtype=bool)
    for lo, hi in _V4_SPECIAL_RANGES:
        out |= (ints >= lo) & (ints <= hi)
    return out


def _v6_special(ip: ipaddress.IPv6Address) -> bool:
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or ip.is_site_local)


@dataclass
class Ranges:
    """Sorted, non-overlapping [first, last] integer ranges with a label index each."""

    first: np.ndarray
    last: np.ndarray
    label: np.ndarray  # index into labels
    labels: list[str]

    def find(self, ints: np.ndarray) -> np.ndarray:
        """Label index per address, -1 where no range covers it."""
        i = np.searchsorted(self.first, ints, side="right") - 1
        ok = (i >= 0) & (ints <= self.last[np.clip(i, 0, None)])
        return np.where(ok, self.label[np.clip(i, 0, None)], -1)


# The geoip2fast data file is read directly (its public API looks up one address at a time, far
# too slow for a report's hundreds of thousands of sources), so its private layout is pinned here:
# a gzipped pickle (version, info, total, db) of the "country with ASN" shape that geoip2fast's own
# loader unpacks, in the releases below. Any other release fails loudly in Bundled() (a test
# checks the installed one) rather than mislabelling every source.
GEOIP2FAST_TESTED = ("1.2.2",)
GEOIP2FAST_DAT_VERSIONS = (120, 121)


class DataFormatError(RuntimeError):
    """The installed geoip2fast data file is not in the layout this module reads."""


class Bundled:
    """The geoip2fast data files, read into numpy ranges."""

    FILE_V4 = "geoip2fast-asn.dat.gz"
    FILE_V6 = "geoip2fast-asn-ipv6.dat.gz"

    def __init__(self) -> None:
        path = resources.files("geoip2fast").joinpath(self.FILE_V4)
        with gzip.open(str(path), "rb") as f:
            version, info, _total, db = pickle.load(f)
        _check_layout(version, info, db)
        (_idx, _idx_asn, names_cc, names_asn, first, first_asn,
         id_cc, id_asn, netlen, netlen_asn) = db
        self.info = str(info.get("info", ""))
        codes = [n.split(":", 1)[0] for n in names_cc]
        # Numeric codes are geoip2fast's reserved/private blocks ("01".."14"); "99" is "not found".
        # (geoip2fast itself treats every label index below 16 as private, Andorra included.)
        self.country_private = np.array([c.isdigit() and c != "99" for c in codes], dtype=bool)
        self.country = self._ranges(first, netlen, id_cc, ["" if c.isdigit() else c for c in codes])
        self.asn = self._ranges(first_asn, netlen_asn, id_asn, list(names_asn))
        self._v6 = None

    @staticmethod
    def _ranges(first: list, netlen: list, ids: list, labels: list[str]) -> Ranges:
        f = np.concatenate([np.asarray(c, dtype=np.uint64) for c in first])
        n = np.concatenate([np.asarray(c, dtype=np.uint64) for c in netlen])
        i = np.concatenate([np.asarray(c, dtype=np.int64) for c in ids])
        last = f + (np.uint64(1) << (np.uint64(32) - n)) - np.uint64(1)
        return Ranges(f, last, i, labels)

    def lookup_v4(self, ints: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
        """(country, as_name, private) per IPv4 integer; '' where unknown."""
        cc_i = self.country.find(ints)
        as_i = self.asn.find(ints)
        cc_labels = np.array(self.country.labels + [""], dtype=object)
        private = (cc_i >= 0) & self.country_private[np.clip(cc_i, 0, None)]
        cc = np.where(private, "", cc_labels[cc_i]).tolist()
        as_labels = np.array(self.asn.labels + [""], dtype=object)
        names = as_labels[as_i].tolist()
        names = ["" if (x == "<unknown>" or p) else x for x, p in zip(names, private)]
        return cc, names, private

    def lookup_v6(self, ip: str) -> tuple[str, str]:
        """(country, as_name) of an IPv6 address through geoip2fast itself ('' if unknown)."""
        if self._v6 is None:
            from geoip2fast import GeoIP2Fast

            self._v6 = GeoIP2Fast(geoip2fast_data_file=self.FILE_V6, verbose=False)
        r = self._v6.lookup(ip)
        cc = r.country_code if r.country_code.isalpha() else ""  # not is_private: Andorra is "private"
        return cc, (r.asn_name if r.asn_name not in ("<unknown>", "IANA.ORG") else "")

    def public_as_ranges(self) -> tuple[Ranges, list[str]]:
        """The AS-named public IPv4 networks with their country, for synthetic sources."""
        a = self.asn
        keep = a.label != a.labels.index("<unknown>") if "<unknown>" in a.labels else np.ones(len(a.label), bool)
        mid = a.first + (a.last - a.first) // np.uint64(2)
        cc_i = self.country.find(mid)
        cc_ok = np.array([bool(c) for c in self.country.labels], dtype=bool)
        keep &= (cc_i >= 0) & cc_ok[np.clip(cc_i, 0, None)] & ~v4_special(a.first)
        r = Ranges(a.first[keep], a.last[keep], a.label[keep], a.labels)
        countries = [self.country.labels[i] for i in cc_i[keep]]
        return r, countries


def _check_layout(version: object, info: object, db: object) -> None:
    def fail(why: str) -> None:
        raise DataFormatError(
            f"geoip2fast {metadata.version('geoip2fast')}: its data file {Bundled.FILE_V4} is not in the "
            f"layout spampots reads ({why}); tested with geoip2fast {', '.join(GEOIP2FAST_TESTED)}. "
            "Install one of those, or name an AS database with --asn-db.")

    if version not in GEOIP2FAST_DAT_VERSIONS:
        fail(f"data version {version!r}, expected one of {GEOIP2FAST_DAT_VERSIONS}")
    if not (isinstance(info, dict) and info.get("country") is True and info.get("asn") is True
            and not info.get("city")):
        fail("not a country-with-ASN file")
    if not (isinstance(db, (list, tuple)) and len(db) == 10 and all(isinstance(x, list) for x in db)):
        fail("not ten lists")
    _i, _ia, names_cc, names_asn, first, first_asn, id_cc, id_asn, netlen, netlen_asn = db
    for a, b, c in ((first, id_cc, netlen), (first_asn, id_asn, netlen_asn)):
        if not (len(a) == len(b) == len(c) and all(len(x) == len(y) == len(z) for x, y, z in zip(a, b, c))):
            fail("range chunks of different lengths")
    if not all(isinstance(n, str) and ":" in n and n.split(":", 1)[0].isalnum() for n in names_cc):
        fail("country labels are not 'CC:name'")
    if "<unknown>" not in names_asn:
        fail("no '<unknown>' AS label")
    top = max((max(x) for x in id_cc if x), default=-1), max((max(x) for x in id_asn if x), default=-1)
    if top[0] >= len(names_cc) or top[1] >= len(names_asn):
        fail("a range points past its label list")


@lru_cache(maxsize=1)
def bundled() -> Bundled:
    return Bundled()


# Debian's libloc-database: the IPFire location database (CC BY-SA 4.0), AS numbers, names and
# countries, offline. Its reader (python3-location) is built for Debian's own python3; it is used
# from another interpreter only when its extension's ABI tag matches that interpreter.
LOCATION_DB = Path("/usr/share/libloc-location/location.db")
LOCATION_PY = Path("/usr/lib/python3/dist-packages")


def _location_module():  # -> the `location` module, or None
    import importlib.machinery
    import sys

    try:
        import location  # type: ignore[import-not-found]
        return location
    except ImportError:
        pass
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    if not any((LOCATION_PY / f"_location{x}").exists() for x in suffixes):
        return None  # absent, or built for another Python
    sys.path.append(str(LOCATION_PY))  # last: never shadows this interpreter's own packages
    try:
        import location  # type: ignore[import-not-found]
        return location
    except ImportError:
        return None
    finally:
        sys.path.remove(str(LOCATION_PY))


def installed_location_db() -> Path | None:
    """The installed IPFire location database when this Python can read it, else None."""
    return LOCATION_DB if LOCATION_DB.is_file() and _location_module() is not None else None


def resolve_asn_db(arg: Path | None) -> Path | None:
    """What --asn-db means: the file named; "none" for the bundled data alone; by default the
    installed IPFire location database, if any (AS numbers offline, no download at run time)."""
    if arg is None:
        return installed_location_db()
    return None if str(arg).lower() == "none" else Path(arg)


class LocationDb:
    """An IPFire location database (libloc format), read with python3-location."""

    def __init__(self, path: Path) -> None:
        mod = _location_module()
        if mod is None:
            raise RuntimeError("reading a libloc .db needs python3-location (the `location` module) "
                               "for this Python")
        self._db = mod.Database(str(path))
        self._names: dict[int, str] = {}

    def get(self, ip: str) -> tuple[Optional[int], str, str]:
        try:
            net = self._db.lookup(ip)
        except (OSError, ValueError):  # libloc reports "not found" as ENOENT
            return None, "", ""
        if net is None:
            return None, "", ""
        asn = net.asn or None
        if asn is not None and asn not in self._names:
            a = self._db.get_as(asn)
            self._names[asn] = (a.name or "") if a is not None else ""
        cc = (net.country_code or "").upper()
        return asn, (self._names[asn] if asn is not None else ""), (cc if cc.isalpha() and len(cc) == 2 else "")


def pfx2as_asn(field: str) -> Optional[int]:
    """The AS of a pfx2as AS field: "123", or the first of "123_456" (multiple origins) and
    "123,456" (an AS set); None when it is not a number."""
    first = field.replace(",", "_").split("_", 1)[0].strip()
    # AS 0 is reserved (RFC 7607): no origin.
    return int(first) if first.isdigit() and 0 < int(first) < 2**32 else None


def _is_pfx2as(path: Path) -> bool:
    """True if the first data line reads prefix, length, AS (RouteViews pfx2as)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                if n > 100:
                    return False
                continue
            return len(parts) == 3 and parts[1].isdigit() and ("." in parts[0] or ":" in parts[0])
    return False


class PrefixTable:
    """Prefix -> AS by longest match (RouteViews pfx2as). IPv4 is looked up vectorised, one
    sorted array of networks per prefix length, longest first; IPv6 per address."""

    def __init__(self, path: Path) -> None:
        v4: dict[int, dict[int, int]] = {}  # length -> {network: AS}
        self._v6: dict[int, dict[int, int]] = {}
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3 or not parts[1].isdigit():
                    continue  # a comment or a broken line
                asn = pfx2as_asn(parts[2])
                try:
                    net = ipaddress.ip_network(f"{parts[0]}/{parts[1]}", strict=False)
                except ValueError:
                    continue
                if asn is None:
                    continue
                table = v4 if net.version == 4 else self._v6
                table.setdefault(net.prefixlen, {})[int(net.network_address)] = asn
        self._v4 = []
        for length in sorted(v4, reverse=True):
            nets = np.array(sorted(v4[length]), dtype=np.uint64)
            asns = np.array([v4[length][int(n)] for n in nets], dtype=np.int64)
            mask = np.uint64(((1 << length) - 1) << (32 - length))
            self._v4.append((mask, nets, asns))
        self._v6_lengths = sorted(self._v6, reverse=True)

    def lookup_v4(self, ints: np.ndarray) -> np.ndarray:
        """AS per IPv4 integer, -1 where no prefix covers it."""
        out = np.full(len(ints), -1, dtype=np.int64)
        for mask, nets, asns in self._v4:
            todo = out < 0
            if not todo.any():
                break
            masked = ints & mask
            i = np.clip(np.searchsorted(nets, masked), 0, len(nets) - 1)
            hit = todo & (nets[i] == masked)
            out[hit] = asns[i[hit]]
        return out

    def lookup_v6(self, ip: str) -> Optional[int]:
        n = int(ipaddress.IPv6Address(ip))
        for length in self._v6_lengths:
            asn = self._v6[length].get(n >> (128 - length) << (128 - length))
            if asn is not None:
                return asn
        return None


class AsnDb:
    """A user's AS database: MMDB, iptoasn TSV, RouteViews pfx2as or IPFire location (libloc) database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        self._mmdb = None
        self._loc: LocationDb | None = None
        self._pfx: PrefixTable | None = None
        if name.endswith(".db"):
            self._loc = LocationDb(self.path)
        elif name.endswith(".mmdb"):
            import maxminddb

            self._mmdb = maxminddb.open_database(str(self.path))
        elif _is_pfx2as(self.path):
            self._pfx = PrefixTable(self.path)
        else:
            self._load_tsv()

    def _load_tsv(self) -> None:
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        v4: list[tuple[int, int, int, str, str]] = []
        v6: list[tuple[int, int, int, str, str]] = []
        with opener(self.path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.reader(f, delimiter="\t"):
                if len(row) < 5 or row[0].startswith("#"):
                    continue
                try:
                    lo, hi = _addr_int(row[0]), _addr_int(row[1])
                    asn = int(row[2])
                except ValueError:
                    continue  # header or a broken line
                rec = (lo[0], hi[0], asn, row[3].strip().upper(), row[4].strip())
                (v4 if lo[1] == 4 else v6).append(rec)
        v4.sort()
        v6.sort()
        self._v4 = Ranges(np.array([r[0] for r in v4], dtype=np.uint64), np.array([r[1] for r in v4], dtype=np.uint64),
                          np.arange(len(v4)), [])
        self._v4_rec = v4
        self._v6_start = [r[0] for r in v6]
        self._v6_rec = v6

    def lookup_v4(self, ints: np.ndarray, ips: list[str]) -> list[tuple[Optional[int], str, str]]:
        """(asn, as_name, country) per address; asn None where not covered/not routed."""
        if self._loc is not None:
            return [self._loc.get(ip) for ip in ips]
        if self._mmdb is not None:
            return [self._mmdb_get(ip) for ip in ips]
        if self._pfx is not None:
            return [(a, "", "") if a >= 0 else (None, "", "") for a in self._pfx.lookup_v4(ints).tolist()]
        idx = self._v4.find(ints) if len(self._v4.first) else np.full(len(ints), -1)
        out = []
        for i in idx.tolist():
            out.append(self._rec(self._v4_rec[i]) if i >= 0 else (None, "", ""))
        return out

    def lookup_v6(self, ip: str) -> tuple[Optional[int], str, str]:
        if self._loc is not None:
            return self._loc.get(ip)
        if self._mmdb is not None:
            return self._mmdb_get(ip)
        if self._pfx is not None:
            return self._pfx.lookup_v6(ip), "", ""
        n = int(ipaddress.IPv6Address(ip))
        i = bisect.bisect_right(self._v6_start, n) - 1
        if i >= 0 and n <= self._v6_rec[i][1]:
            return self._rec(self._v6_rec[i])
        return None, "", ""

    @staticmethod
    def _rec(r: tuple[int, int, int, str, str]) -> tuple[Optional[int], str, str]:
        if r[2] == 0:  # iptoasn: "Not routed"
            return None, "", r[3] if r[3] not in ("NONE", "") else ""
        return r[2], r[4], r[3] if r[3] not in ("NONE", "ZZ") else ""

    def _mmdb_get(self, ip: str) -> tuple[Optional[int], str, str]:
        try:
            rec = self._mmdb.get(ip)  # type: ignore[union-attr]
        except ValueError:
            return None, "", ""
        if not isinstance(rec, dict):
            return None, "", ""
        asn = rec.get("autonomous_system_number")
        name = rec.get("autonomous_system_organization") or rec.get("as_name") or rec.get("isp") or ""
        if asn is None and isinstance(rec.get("asn"), (str, int)):  # IPinfo: "AS15169"
            try:
                asn = int(str(rec["asn"]).upper().removeprefix("AS"))
            except ValueError:
                asn = None
        cc = rec.get("country_code") or rec.get("country") or ""
        if isinstance(cc, dict):  # MaxMind country/city databases
            cc = cc.get("iso_code") or ""
        return (int(asn) if asn is not None else None), str(name), str(cc).upper()

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _addr_int(s: str) -> tuple[int, int]:
    s = s.strip()
    if s.isdigit():
        return int(s), 4
    a = ipaddress.ip_address(s)
    return int(a), a.version


class Enricher:
    """Looks up IPs once each, through the per-IP cache."""

    def __init__(self, asn_db: Path | None = None, cache_dir: Path | None = None, quiet: bool = True) -> None:
        self.asn_db = AsnDb(asn_db) if asn_db else None
        self.cache_dir = cache_dir
        self.quiet = quiet
        # The installed IPFire database is a current source, as the bundled data is: where it has
        # no AS (Debian's copy is older), the bundled AS name fills in. A file named with --asn-db
        # may be a dated table, so it is never mixed with today's names.
        self._fill_names = self.asn_db is not None and self.asn_db.path == LOCATION_DB
        parts = [f"geoip2fast {metadata.version('geoip2fast')}"]
        if self.asn_db:
            parts.append(self.asn_db.fingerprint() + (" +bundled names" if self._fill_names else ""))
        self.fingerprint = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        self.lookups = 0  # addresses actually looked up (not served from the cache)

    @property
    def source(self) -> str:
        # The data file's own name, without loading it when every IP came from the cache.
        info = bundled().info if bundled.cache_info().currsize else "GeoLite2 country + AS names"
        s = f"geoip2fast {metadata.version('geoip2fast')} ({info})"
        return s + (f" + {self.asn_db.path.name}" if self.asn_db else "")

    def _cache_path(self) -> Path | None:
        return self.cache_dir / f"enrich-{self.fingerprint}.parquet" if self.cache_dir else None

    @property
    def cache_path(self) -> Path | None:
        """The per-IP cache (a Parquet file of SCHEMA, written by enrich), or None without a cache dir:
        a SQL engine may join it directly and send only the addresses it lacks through enrich."""
        return self._cache_path()

    def enrich(self, ips: Iterable[str]) -> pa.Table:
        """One row per distinct input address (SCHEMA), cached ones included."""
        wanted = pa.array(list(dict.fromkeys(ips)), pa.string())
        path = self._cache_path()
        cached = pq.read_table(path) if path and path.exists() else None
        if cached is not None:
            missing = wanted.filter(pc.invert(pc.is_in(wanted, value_set=cached.column("ip")))).to_pylist()
        else:
            missing = wanted.to_pylist()
        fresh = self._lookup(missing)
        self.lookups += len(missing)
        table = pa.concat_tables([cached, fresh]) if cached is not None else fresh
        if path and missing:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            tmp.replace(path)
        if len(wanted) < len(table):
            table = table.filter(pc.is_in(table.column("ip"), value_set=wanted))
        return table

    def _lookup(self, ips: list[str]) -> pa.Table:
        n = len(ips)
        asn: list[Optional[int]] = [None] * n
        name = [""] * n
        cc = [""] * n
        kind = ["public"] * n
        v4_pos, v4_int = [], []
        with progress.bar("enriching", total=n, quiet=self.quiet) as tick:
            for i, ip in enumerate(ips):
                try:  # the common case first: a dotted quad, parsed in C
                    v4_int.append(int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big"))
                    v4_pos.append(i)
                    continue
                except OSError:
                    pass
                try:
                    a = ipaddress.ip_address(ip)
                except ValueError:
                    kind[i] = INVALID
                    continue
                if a.version == 6 and a.ipv4_mapped is not None:
                    a = a.ipv4_mapped
                if a.version == 4:
                    v4_pos.append(i)
                    v4_int.append(int(a))
                    continue
                if _v6_special(a):
                    kind[i] = PRIVATE
                    continue
                cc[i], name[i] = bundled().lookup_v6(str(a))
                if self.asn_db:
                    asn[i], nm, c = self.asn_db.lookup_v6(str(a))
                    name[i], cc[i] = nm or name[i], c or cc[i]
                tick(1)
            if v4_pos:
                ints = np.array(v4_int, dtype=np.uint64)
                b_cc, b_name, b_priv = bundled().lookup_v4(ints)
                special = v4_special(ints) | b_priv
                user = self.asn_db.lookup_v4(ints, [ips[i] for i in v4_pos]) if self.asn_db else None
                for j, i in enumerate(v4_pos):
                    if special[j]:
                        kind[i] = PRIVATE
                        continue
                    cc[i], name[i] = b_cc[j], b_name[j]
                    if user:
                        asn[i], nm, c = user[j]
                        name[i] = nm if asn[i] is not None else (name[i] if self._fill_names else "")
                        cc[i] = c or cc[i]
                tick(len(v4_pos))
        for i in range(n):
            if kind[i] == "public" and not (name[i] or asn[i] is not None or cc[i]):
                kind[i] = UNKNOWN
            if kind[i] != "public":
                cc[i] = NO_COUNTRY
                name[i] = kind[i]
                asn[i] = None
            else:
                cc[i] = cc[i] or NO_COUNTRY
                name[i] = name[i] or UNKNOWN
        return pa.table([pa.array(ips, pa.string()), pa.array(asn, pa.int64()),
                         pa.array(name, pa.string()), pa.array(cc, pa.string()), pa.array(kind, pa.string())],
                        schema=SCHEMA)

