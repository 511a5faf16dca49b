"""Offline enrichment: bundled data, MMDB and iptoasn TSV, special addresses, the per-IP cache."""

from __future__ import annotations

import gzip
import ipaddress
import struct
from pathlib import Path

import pytest

from spampots.analysis.enrich import Enricher, bundled


def _by_ip(table) -> dict[str, dict]:
    return {r["ip"]: r for r in table.to_pylist()}


def test_bundled_data_gives_country_and_as_name() -> None:
    got = _by_ip(Enricher().enrich(["8.8.8.8", "200.160.2.3", "2001:4860:4860::8888", "::ffff:1.1.1.1"]))
    assert got["8.8.8.8"]["country"] == "US" and "GOOGLE" in got["8.8.8.8"]["as_name"]
    assert got["200.160.2.3"]["country"] == "BR" and got["200.160.2.3"]["kind"] == "public"
    assert got["2001:4860:4860::8888"]["country"] == "US"  # IPv6 through the bundled v6 file
    assert got["::ffff:1.1.1.1"]["as_name"] == "CLOUDFLARENET"  # IPv4-mapped is IPv4
    assert all(r["asn"] is None for r in got.values())  # the bundled data has AS names only


def test_special_addresses_are_reported_not_dropped() -> None:
    ips = ["10.0.0.1", "127.0.0.1", "192.168.1.1", "100.64.0.1", "203.0.113.9", "::1", "fe80::1",
           "2001:db8::1", "not-an-ip", ""]
    got = _by_ip(Enricher().enrich(ips))
    assert set(got) == set(ips)
    for ip in ips[:7]:
        assert (got[ip]["kind"], got[ip]["country"], got[ip]["as_name"]) == ("private", "--", "private"), ip
    assert got["not-an-ip"]["kind"] == got[""]["kind"] == "invalid"


def test_vectorised_lookup_agrees_with_geoip2fast() -> None:
    from geoip2fast import GeoIP2Fast

    g = GeoIP2Fast(geoip2fast_data_file="geoip2fast-asn.dat.gz")
    ips = [str(ipaddress.IPv4Address(x)) for x in range(16_777_216, 3_758_096_384, 9_999_991)]
    mine = _by_ip(Enricher().enrich(ips))
    for ip in ips:
        r = g.lookup(ip)
        if r.is_private or r.country_code == "--":
            continue
        assert mine[ip]["country"] == r.country_code, ip
        assert mine[ip]["as_name"] == (r.asn_name or "unknown"), ip


def test_public_ranges_for_synthetic_sources_are_public() -> None:
    ranges, countries = bundled().public_as_ranges()
    assert len(ranges.first) > 100_000 and len(set(countries)) > 150
    assert "--" not in countries


# -- a user's AS databases ----------------------------------------------------------------------
def test_iptoasn_tsv(tmp_path: Path) -> None:
    tsv = tmp_path / "ip2asn-combined.tsv.gz"
    with gzip.open(tsv, "wt") as f:
        f.write("1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n")
        f.write("200.160.0.0\t200.160.15.255\t22548\tBR\tNucleo de Inf. e Coord. do Ponto BR - NIC.br\n")
        f.write("223.255.255.0\t223.255.255.255\t0\tNone\tNot routed\n")
        f.write("2001:4860::\t2001:4860:ffff:ffff:ffff:ffff:ffff:ffff\t15169\tUS\tGOOGLE\n")
    got = _by_ip(Enricher(asn_db=tsv).enrich(["1.0.0.1", "200.160.2.3", "223.255.255.1", "2001:4860::1", "8.8.8.8"]))
    assert (got["1.0.0.1"]["asn"], got["1.0.0.1"]["as_name"]) == (13335, "CLOUDFLARENET")
    assert got["200.160.2.3"]["asn"] == 22548 and got["200.160.2.3"]["country"] == "BR"
    assert got["2001:4860::1"]["asn"] == 15169
    assert got["223.255.255.1"]["asn"] is None  # "Not routed"
    # not in the user's file: no AS, but the country still comes from the bundled data
    assert got["8.8.8.8"]["asn"] is None and got["8.8.8.8"]["country"] == "US"


def _mmdb(path: Path, networks: dict[str, dict]) -> None:
    """A minimal MaxMind DB writer (IPv4 tree, 24-bit records), enough for maxminddb to read."""

    def ctrl(t: int, size: int) -> bytes:
        assert size < 285
        head, extra = (size, b"") if size < 29 else (29, bytes([size - 29]))
        return (bytes([(t << 5) | head]) if t <= 7 else bytes([head, t - 7])) + extra

    def enc(v) -> bytes:
        if isinstance(v, str):
            b = v.encode()
            return ctrl(2, len(b)) + b
        if isinstance(v, tuple):  # (type, int): uint16 = 5, uint32 = 6, uint64 = 9
            b = v[1].to_bytes((v[1].bit_length() + 7) // 8, "big")
            return ctrl(v[0], len(b)) + b
        if isinstance(v, int):
            return enc((6, v))
        if isinstance(v, dict):
            return ctrl(7, len(v)) + b"".join(enc(k) + enc(x) for k, x in v.items())
        if isinstance(v, list):
            return ctrl(11, len(v)) + b"".join(enc(x) for x in v)
        raise TypeError(v)

    data, offsets = b"", []
    for rec in networks.values():
        offsets.append(len(data))
        data += enc(rec)
    nodes: list[list] = [[None, None]]
    for (net, _), off in zip(networks.items(), offsets):
        n = ipaddress.ip_network(net)
        bits, node = int(n.network_address), 0
        for depth in range(n.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == n.prefixlen - 1:
                nodes[node][bit] = ("data", off)
            else:
                if nodes[node][bit] is None:
                    nodes.append([None, None])
                    nodes[node][bit] = ("node", len(nodes) - 1)
                node = nodes[node][bit][1]
    count = len(nodes)

    def val(r) -> int:
        if r is None:
            return count
        return r[1] if r[0] == "node" else count + 16 + r[1]

    tree = b"".join(struct.pack(">I", val(a))[1:] + struct.pack(">I", val(b))[1:] for a, b in nodes)
    meta = enc({"node_count": count, "record_size": (5, 24), "ip_version": (5, 4), "database_type": "Test-ASN",
                "languages": ["en"], "binary_format_major_version": (5, 2), "binary_format_minor_version": (5, 0),
                "build_epoch": (9, 1), "description": {"en": "test"}})
    path.write_bytes(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)


def test_mmdb_maxmind_and_ipinfo_shapes(tmp_path: Path) -> None:
    db = tmp_path / "asn.mmdb"
    _mmdb(db, {"200.160.0.0/20": {"autonomous_system_number": 22548, "autonomous_system_organization": "NIC.br"},
               "8.8.8.0/24": {"asn": "AS15169", "as_name": "Google LLC", "country_code": "US"}})
    got = _by_ip(Enricher(asn_db=db).enrich(["200.160.2.3", "8.8.8.8", "9.9.9.9"]))
    assert (got["200.160.2.3"]["asn"], got["200.160.2.3"]["as_name"], got["200.160.2.3"]["country"]) == \
        (22548, "NIC.br", "BR")
    assert (got["8.8.8.8"]["asn"], got["8.8.8.8"]["as_name"]) == (15169, "Google LLC")
    assert got["9.9.9.9"]["asn"] is None


def test_cache_is_per_ip_and_per_database(tmp_path: Path) -> None:
    e = Enricher(cache_dir=tmp_path)
    first = e.enrich(["8.8.8.8", "1.1.1.1"])
    assert e.lookups == 2
    again = Enricher(cache_dir=tmp_path)
    assert again.enrich(["1.1.1.1", "8.8.8.8", "1.1.1.1"]).num_rows == 2
    assert again.lookups == 0
    more = Enricher(cache_dir=tmp_path)
    assert more.enrich(["8.8.8.8", "9.9.9.9"]).num_rows == 2 and more.lookups == 1
    assert sorted(first.column("ip").to_pylist()) == ["1.1.1.1", "8.8.8.8"]
    tsv = tmp_path / "x.tsv"
    tsv.write_text("8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n")
    other = Enricher(asn_db=tsv, cache_dir=tmp_path)
    assert other.fingerprint != e.fingerprint
    assert _by_ip(other.enrich(["8.8.8.8"]))["8.8.8.8"]["asn"] == 15169 and other.lookups == 1


def test_bad_asn_db_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.mmdb"
    bad.write_bytes(b"nope")
    with pytest.raises(Exception):
        Enricher(asn_db=bad)


# -- what the summary counts with AS numbers ----------------------------------------------------
def _summary_with_asn_db(tmp_path: Path, tsv: Path, ips: list[str]) -> dict:
    from spampots.analysis import metrics, ports
    from spampots.analysis.lake import Lake
    from test_analysis_pipeline import Capture

    c = Capture(tmp_path / "data")
    for ip in ips:
        c.session(ip, 1080).request("socks5", "mx.a.example", 25).mail(1, "socks5:mx.a.example:25")
    c.flush()
    lake = Lake(tmp_path / "data")
    lake.compact()
    rep = metrics.run(lake.connect(), ports=ports.load(), enricher=Enricher(asn_db=tsv), opts=metrics.Options())
    r = rep.get("summary")
    return dict(zip([col.key for col in r.columns], r.rows[0]))


@pytest.mark.parametrize("named", [True, False])
def test_unique_asns_count_numbers_even_without_names(tmp_path: Path, named: bool) -> None:
    # A dated table may have AS numbers and no names: 8 ASes are 8 ASes either way.
    tsv = tmp_path / "dated.tsv"
    lines = [f"{n}.0.0.0\t{n}.255.255.255\t{64500 + n}\tUS\t{f'AS-{n}' if named else ''}\n" for n in range(11, 19)]
    tsv.write_text("".join(lines))
    s = _summary_with_asn_db(tmp_path, tsv, [f"{n}.1.2.3" for n in range(11, 19)])
    assert (s["asns_all"], s["asns_mail"]) == (8, 8)


def test_sources_without_an_as_are_unlocated(tmp_path: Path) -> None:
    # 8.8.8.8 and 9.9.9.9 are not in the table: they have a country (bundled data) but no AS.
    tsv = tmp_path / "dated.tsv"
    tsv.write_text("11.0.0.0\t11.255.255.255\t64511\tUS\tAS-11\n12.0.0.0\t12.255.255.255\t64512\tUS\tAS-12\n")
    s = _summary_with_asn_db(tmp_path, tsv, ["11.1.2.3", "12.1.2.3", "8.8.8.8", "9.9.9.9", "10.1.2.3"])
    assert s["asns_all"] == 2 and s["cc_all"] == 1
    assert s["unlocated"] == 3  # the two without an AS, and the private 10.1.2.3


# -- the geoip2fast data file, read directly ----------------------------------------------------
def test_installed_geoip2fast_is_the_pinned_data_format() -> None:
    from importlib import metadata

    from spampots.analysis import enrich

    installed = metadata.version("geoip2fast")
    assert installed in enrich.GEOIP2FAST_TESTED, (
        f"geoip2fast {installed} is installed, but enrich.py reads the private data file of "
        f"{enrich.GEOIP2FAST_TESTED} only: check the layout (enrich._check_layout) and add the version")
    bundled()  # and the file really is in that layout


def test_other_data_layouts_fail_clearly() -> None:
    from spampots.analysis.enrich import DataFormatError, _check_layout

    info = {"country": True, "asn": True, "city": False}
    ok = [[0], [0], ["01:Reserved", "AD:Andorra"], ["<unknown>", "X"], [[1]], [[1]], [[1]], [[1]], [[8]], [[8]]]
    _check_layout(120, info, ok)
    for version, inf, db, why in [(130, info, ok, "data version 130"),
                                  (120, {**info, "city": True}, ok, "country-with-ASN"),
                                  (120, info, ok[:9], "ten lists"),
                                  (120, info, ok[:4] + [[[1, 2]]] + ok[5:], "different lengths"),
                                  (120, info, ok[:6] + [[[5]]] + ok[7:], "past its label list")]:
        with pytest.raises(DataFormatError, match=why) as e:
            _check_layout(version, inf, db)
        assert "tested with geoip2fast" in str(e.value)


def test_andorra_is_a_country_not_a_private_block() -> None:
    # geoip2fast marks label indices below 16 as private, and AD is index 15.
    got = _by_ip(Enricher().enrich(["85.94.160.1", "194.158.64.1", "10.0.0.1"]))
    assert (got["85.94.160.1"]["kind"], got["85.94.160.1"]["country"]) == ("public", "AD")
    assert "Andorra" in got["194.158.64.1"]["as_name"]
    assert got["10.0.0.1"]["kind"] == "private"


# -- the IPFire location database (Debian: libloc-database, python3-location) --------------------
def test_ipfire_location_db_gives_as_numbers_offline(tmp_path: Path) -> None:
    from spampots.analysis.enrich import LOCATION_DB, installed_location_db

    db = installed_location_db()
    if db is None:
        pytest.skip(f"no readable {LOCATION_DB} (apt-get install libloc-database python3-location)")
    ips = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "200.160.2.3", "2001:4860:4860::8888", "10.0.0.1", "192.0.2.1"]
    got = _by_ip(Enricher(asn_db=db, cache_dir=tmp_path).enrich(ips))  # a local file: no network
    assert (got["8.8.8.8"]["asn"], got["8.8.8.8"]["country"]) == (15169, "US")
    assert "GOOGLE" in got["8.8.8.8"]["as_name"]
    assert got["1.1.1.1"]["asn"] == 13335 and got["9.9.9.9"]["asn"] == 19281
    assert (got["200.160.2.3"]["asn"], got["200.160.2.3"]["country"]) == (22548, "BR")  # NIC.br
    assert got["2001:4860:4860::8888"]["asn"] == 15169
    assert got["10.0.0.1"]["kind"] == got["192.0.2.1"]["kind"] == "private"
    assert all(r["asn"] is None for ip, r in got.items() if r["kind"] != "public")


def test_asn_db_default_is_the_installed_location_db(tmp_path: Path) -> None:
    from spampots.analysis.enrich import installed_location_db, resolve_asn_db

    assert resolve_asn_db(None) == installed_location_db()  # the IPFire database when installed
    assert resolve_asn_db(Path("none")) is None  # the bundled data alone
    assert resolve_asn_db(tmp_path / "x.tsv") == tmp_path / "x.tsv"


def test_installed_location_db_gaps_keep_the_bundled_as_name(tmp_path: Path) -> None:
    from spampots.analysis.enrich import installed_location_db

    db = installed_location_db()
    if db is None:
        pytest.skip("no readable IPFire location database")
    ranges, _ = bundled().public_as_ranges()
    ips = [str(ipaddress.IPv4Address(int(x))) for x in ranges.first[::97]]
    both = zip(Enricher(asn_db=db).enrich(ips).to_pylist(), Enricher().enrich(ips).to_pylist())
    gaps = [(a, b) for a, b in both if a["asn"] is None]
    assert len(gaps) < len(ips) // 4
    assert all(a["as_name"] == b["as_name"] != "unknown" for a, b in gaps)
    # a named file is not filled in: it may be a table of another date
    tsv = tmp_path / "dated.tsv"
    tsv.write_text("11.0.0.0\t11.255.255.255\t64511\tUS\tAS-11\n")
    assert Enricher(asn_db=tsv).enrich(["8.8.8.8"]).to_pylist()[0]["as_name"] == "unknown"


# -- dated prefix tables (RouteViews pfx2as) ------------------------------------------------------
PFX2AS = """\
# a comment line, then nested prefixes out of order
11.0.0.0\t8\t64511
11.1.0.0\t16\t64512
11.1.2.0\t24\t64513_64514
11.1.2.128\t25\t64515,64516
2a00:1450::\t32\t64520
2a00:1450:1::\t48\t64521
12.0.0.0\t8\t0
not a line
13.0.0.0\t8\tAS-junk
0.0.0.0\t0\t64599
"""


@pytest.mark.parametrize("gz", [False, True])
def test_pfx2as_longest_match_over_nested_prefixes(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("routeviews-rv2-20070101-1200.pfx2as" + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(PFX2AS)
    else:
        path.write_text(PFX2AS)
    ips = ["11.9.9.9", "11.1.9.9", "11.1.2.3", "11.1.2.200", "11.1.2.127", "2a00:1450:2::1", "2a00:1450:1::5",
           "12.0.0.1", "13.0.0.1", "8.8.8.8", "10.1.2.3", "2a01::1"]
    got = {ip: (r["asn"], r["as_name"], r["country"], r["kind"]) for ip, r in _by_ip(
        Enricher(asn_db=path).enrich(ips)).items()}
    assert got["11.9.9.9"][0] == 64511  # only the /8 covers it
    assert got["11.1.9.9"][0] == 64512  # the /16 inside the /8
    assert got["11.1.2.3"][0] == 64513  # the /24; "64513_64514" (multiple origins): the first
    assert got["11.1.2.200"][0] == 64515  # the /25 inside the /24; "64515,64516" (an AS set): the first
    assert got["11.1.2.127"][0] == 64513  # just below the /25
    assert got["2a00:1450:1::5"][0] == 64521 and got["2a00:1450:2::1"][0] == 64520
    assert got["12.0.0.1"][0] == 64599 and got["13.0.0.1"][0] == 64599  # AS 0 and junk: the /0 below them
    assert got["8.8.8.8"][:3] == (64599, "unknown", "US")  # no names in pfx2as; country from the bundled data
    assert got["10.1.2.3"][3] == "private" and got["10.1.2.3"][0] is None  # never looked up
    assert got["2a01::1"][0] is None  # no IPv6 /0


def test_pfx2as_without_a_default_route_leaves_gaps(tmp_path: Path) -> None:
    path = tmp_path / "dated.pfx2as"
    path.write_text("11.0.0.0\t8\t64511\n11.1.0.0\t16\t64512\n")
    got = _by_ip(Enricher(asn_db=path).enrich(["11.0.0.1", "11.1.0.1", "12.0.0.1", "11.255.255.255"]))
    assert [got[ip]["asn"] for ip in ("11.0.0.1", "11.1.0.1", "12.0.0.1", "11.255.255.255")] == \
        [64511, 64512, None, 64511]
    s = _summary_with_asn_db(tmp_path, path, ["11.0.0.1", "11.1.0.1", "12.0.0.1"])
    assert s["asns_all"] == 2 and s["unlocated"] == 1  # counted by number though nameless; 12.0.0.1 has none
