"""Build src/spampots/data/world-110m.json from the world-atlas npm package (dev time only).

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python3 scripts/world_atlas.py package/countries-110m.json src/spampots/data/world-110m.json

world-atlas ships Natural Earth's 1:110m countries (public domain) as TopoJSON keyed by ISO 3166-1
numeric codes; the report's data speaks alpha-2 codes, so the rings are decoded to plain lon/lat
lists (0.1 degree) keyed by alpha-2, the mapping taken from Debian's iso-codes. The result is read
by spampots.analysis.charts to draw the map offline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ISO = Path("/usr/share/iso-codes/json/iso_3166-1.json")  # Debian package iso-codes


def decode(topo: dict) -> dict[str, list[list[list[float]]]]:
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((round(x * sx + tx, 1), round(y * sy + ty, 1)))
        arcs.append(pts)

    def ring(idx: list[int]) -> list[float]:
        out: list[tuple[float, float]] = []
        for i in idx:
            pts = arcs[i] if i >= 0 else arcs[~i][::-1]
            out.extend(pts[1:] if out else pts)
        flat: list[float] = []
        for p in out:
            if not flat or (flat[-2], flat[-1]) != p:
                flat.extend(p)
        return flat

    numeric = {c["numeric"]: c["alpha_2"] for c in json.loads(ISO.read_text())["3166-1"]}
    numeric["-99"] = None  # world-atlas: disputed areas without a code (N. Cyprus, Somaliland, Kosovo)
    out: dict[str, list] = {}
    for g in topo["objects"]["countries"]["geometries"]:
        code = numeric.get(g.get("id"))
        name = g.get("properties", {}).get("name", "")
        if code is None:
            code = {"Kosovo": "XK"}.get(name)
        if code is None or code == "AQ":  # Antarctica sends no mail
            continue
        polys = g["arcs"] if g["type"] == "MultiPolygon" else [g["arcs"]] if g["type"] == "Polygon" else []
        rings = out.setdefault(code, [])
        for poly in polys:
            for r in poly[:1]:  # outer rings only: holes are too small to see at this scale
                flat = ring(r)
                if len(flat) >= 6:
                    rings.extend(unwrap(flat))
    return out


def unwrap(flat: list[float]) -> list[list[float]]:
    """A ring that crosses the antimeridian (a jump of more than 180 degrees) as two copies, one on
    each side of the map, so no band is drawn across the world (Russia, Fiji)."""
    lons = flat[0::2]
    if all(abs(b - a) <= 180 for a, b in zip(lons, lons[1:])):
        return [flat]
    east = []
    for i in range(0, len(flat), 2):
        lon = flat[i] + 360 if flat[i] < 0 else flat[i]
        east += [round(lon, 1), flat[i + 1]]
    west = [round(v - 360, 1) if i % 2 == 0 else v for i, v in enumerate(east)]
    return [east, west]


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    countries = decode(json.loads(src.read_text()))
    doc = {"source": "Natural Earth 1:110m countries (public domain) via the world-atlas npm package 2.0.2 "
                     "(ISC, Copyright 2013-2019 Michael Bostock); lon/lat rings, 0.1 degree, ISO 3166-1 alpha-2",
           "countries": dict(sorted(countries.items()))}
    dst.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"{len(countries)} countries -> {dst} ({dst.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
