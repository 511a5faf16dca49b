#!/usr/bin/env python3
"""Make src/spampots/serve/static/world.json: one SVG path per country, keyed by ISO alpha-2.

Run at development time only (the dashboard loads nothing from the internet):
    npm pack world-atlas@2 i18n-iso-countries@7   # then unpack both
    python3 scripts/make_world_map.py world-atlas/package/countries-110m.json i18n-iso-countries/package/codes.json
Geometry: Natural Earth 1:110m (public domain) through world-atlas (ISC); the numeric-to-alpha-2
table from i18n-iso-countries (MIT). Projection: equirectangular, 720 x 360 (1 unit = 0.5 degree).
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src/spampots/serve/static/world.json"


def arcs_of(topo: dict) -> list[list[tuple[float, float]]]:
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:  # delta-encoded, quantized
            x, y = x + dx, y + dy
            pts.append((x * sx + tx, y * sy + ty))
        out.append(pts)
    return out


def ring(arcs: list, idx: list[int]) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    for i in idx:
        a = arcs[i] if i >= 0 else arcs[~i][::-1]
        pts.extend(a if not pts else a[1:])
    return pts


def path(rings: list[list[tuple[float, float]]]) -> str:
    parts = []
    for r in rings:
        if any(abs(a[0] - b[0]) > 180 for a, b in zip(r, r[1:])):
            r = [(lon + 360 if lon < 0 else lon, lat) for lon, lat in r]  # crosses the antimeridian
        xy = [(round((lon + 180) * 2, 1), round((90 - lat) * 2, 1)) for lon, lat in r]
        simplified = [p for i, p in enumerate(xy) if i == 0 or p != xy[i - 1]]
        if len(simplified) < 3:
            continue
        parts.append("M" + "L".join(f"{x:g},{y:g}" for x, y in simplified) + "Z")
    return "".join(parts)


def main(topo_path: str, codes_path: str) -> None:
    topo = json.loads(Path(topo_path).read_text())
    alpha2 = {num: a2 for a2, _a3, num, _ in json.loads(Path(codes_path).read_text())}
    arcs = arcs_of(topo)
    out = {}
    for g in topo["objects"]["countries"]["geometries"]:
        cc = alpha2.get(str(g.get("id", "")))
        if not cc or g["type"] not in ("Polygon", "MultiPolygon"):
            continue  # e.g. Kosovo and N. Cyprus have no ISO number in the data
        polys = [g["arcs"]] if g["type"] == "Polygon" else g["arcs"]
        d = path([ring(arcs, r) for poly in polys for r in poly])
        out[cc] = {"name": g["properties"]["name"], "d": d}
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True))
    print(f"{len(out)} countries, {OUT.stat().st_size:,} bytes -> {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
