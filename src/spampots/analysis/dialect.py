"""SQL dialects: the metric SQL is written once, in DuckDB's spelling, and translated here for Spark.

metrics.py and schema.MACROS are the one copy of every query; they are written in portable SQL
where a portable spelling exists (GROUP BY ALL, min_by, mode() WITHIN GROUP, hour(ts), FULL JOIN
USING, FILTER, named windows, range(n) t(c): all read the same in DuckDB and Spark 4). What is left
is DuckDB-only, and :func:`to_spark` rewrites it with the explicit rules below, on tokens (string
literals and quoted names are never touched by a rule meant for code):

* ``"name"`` is an identifier in DuckDB, a string in Spark: becomes ```name```.
* ``'a\\b'``: DuckDB strings have no escapes, Spark's do: backslashes are doubled.
* ``100.0`` is a DECIMAL in both, but DuckDB divides decimals into a DOUBLE and Spark keeps a
  DECIMAL of 6 digits of scale: decimal literals become DOUBLE literals (``100.0D``).
* ``ORDER BY x``: DuckDB puts NULLs last, Spark first when ascending: ``NULLS LAST`` is added to
  every ORDER BY item that does not say.
* ``::TYPE`` and ``CAST(x AS TYPE)``: DuckDB type names become Spark's (``VARCHAR`` -> ``STRING``,
  ``UBIGINT`` -> ``DECIMAL(20,0)``, which is how Spark reads Parquet's UINT64; ``TIMESTAMP`` ->
  ``TIMESTAMP_NTZ``, the lake's naive UTC timestamps).
* ``a // b`` -> ``a DIV b``.
* Functions: :data:`SPARK_FUNCS` (``arg_min`` -> ``min_by``, ``epoch``, ``unnest`` -> ``explode``,
  ``from_json`` with a DuckDB JSON structure -> a Spark DDL type, md5_number_*, ...).
* Macros: schema.MACROS, expanded inline (Spark SQL has no macros); their bodies are translated by
  the same rules, and the two that rely on unsigned 64-bit bit operations (ip_key, ip_str) have a
  Spark body of their own in :data:`SPARK_MACROS`.

A query that still uses something DuckDB-only fails on Spark with Spark's own error, and the parity
test (tests/test_spark.py) runs every metric on both engines.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Callable

from . import schema

_TOKEN = re.compile(r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<comment>--[^\n]*)
  | (?P<num>\d+\.\d+(?:[eE][+-]?\d+)?(?![\w.])|\d+(?:[eE][+-]?\d+)?(?!\w))
  | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<space>\s+)
  | (?P<op>::|//|<<|>>|\|\||<=|>=|<>|!=|.)
""", re.S | re.X)

Tokens = list[str]


def tokenize(sql: str) -> Tokens:
    return [m.group() for m in _TOKEN.finditer(sql)]


def _is_word(t: str) -> bool:
    return bool(t) and (t[0].isalpha() or t[0] == "_")


# -- types ------------------------------------------------------------------------------------
SPARK_TYPES = {"VARCHAR": "STRING", "TEXT": "STRING", "JSON": "STRING", "UBIGINT": "DECIMAL(20,0)",
               "HUGEINT": "DECIMAL(38,0)", "UINTEGER": "BIGINT", "INTEGER": "INT", "TIMESTAMP": "TIMESTAMP_NTZ",
               "REAL": "FLOAT"}


def spark_type(duck: str) -> str:
    """A DuckDB column type (as schema.py writes them) in Spark's DDL spelling."""
    duck = duck.strip()
    if duck.endswith("[]"):
        return f"ARRAY<{spark_type(duck[:-2])}>"
    return SPARK_TYPES.get(duck.upper(), duck.upper())


def _json_structure_type(structure: object) -> str:
    """DuckDB's from_json structure ('[{"port": "INTEGER"}]') as a Spark DDL type."""
    if isinstance(structure, list):
        return f"ARRAY<{_json_structure_type(structure[0])}>"
    if isinstance(structure, dict):
        return "STRUCT<" + ", ".join(f"`{k}`: {_json_structure_type(v)}" for k, v in structure.items()) + ">"
    return spark_type(str(structure))


# -- function rewrites (arguments already translated) -------------------------------------------
def _md5_number(x: str, first_byte: int) -> str:
    # DuckDB reads 8 bytes of the digest little-endian: reverse the hex pairs, then base 16 -> 10.
    pairs = ", ".join(f"substr(md5({x}), {2 * (first_byte + i) + 1}, 2)" for i in reversed(range(8)))
    return f"CAST(conv(concat({pairs}), 16, 10) AS DECIMAL(20,0))"


def _str_agg(args: list[str]) -> str:
    # string_agg(x, sep ORDER BY y): Spark takes the order as WITHIN GROUP (ORDER BY y).
    toks = tokenize(args[-1])
    words = [t.upper() for t in toks]
    for i in range(len(toks) - 2):
        if words[i] == "ORDER" and not toks[i + 1].strip() and words[i + 2] == "BY":
            sep = "".join(toks[:i]).strip()
            return f"string_agg({', '.join(args[:-1] + [sep])}) WITHIN GROUP ({''.join(toks[i:]).strip()})"
    return f"string_agg({', '.join(args)})"


def _cast(fn: str) -> Callable[[list[str]], str]:
    def rewrite(args: list[str]) -> str:
        toks = tokenize(args[0])
        ups = [t.upper() for t in toks]
        at = max(i for i, t in enumerate(ups) if t == "AS")
        return f"{fn}({''.join(toks[:at])}AS {spark_type(''.join(toks[at + 1:]))})"
    return rewrite


def _from_json(args: list[str]) -> str:
    literal = args[1].strip()
    if literal.startswith("'"):
        ddl = _json_structure_type(json.loads(literal[1:-1].replace("''", "'").replace("\\\\", "\\")))
        return f"from_json({args[0]}, '{ddl}')"
    return f"from_json({args[0]}, {args[1]})"


def _regex(literal: str) -> str:
    # RE2's \v is the vertical tab; Java's is any vertical whitespace (also U+0085, U+2028...).
    return literal.replace("\\\\v", "\\\\x0B") if literal.startswith("'") else literal


def _regexp_replace(args: list[str]) -> str:
    # DuckDB replaces the first match unless the flags say 'g'; Spark always replaces every match,
    # and its 4th argument is a position. Group references (\1 vs $1) differ too: not translated.
    flags = args[3].strip("' ") if len(args) > 3 else ""
    if "g" not in flags or set(flags) - {"g"} or "$" in args[2] or "\\" in args[2]:
        raise ValueError(f"regexp_replace({', '.join(args)}): only the 'g' flag and plain replacements "
                         "translate to Spark")
    return f"regexp_replace({args[0]}, {_regex(args[1])}, {args[2]})"


SPARK_FUNCS: dict[str, Callable[[list[str]], str]] = {
    "arg_min": lambda a: f"min_by({', '.join(a)})",
    "arg_max": lambda a: f"max_by({', '.join(a)})",
    "epoch": lambda a: f"(unix_micros(CAST({a[0]} AS TIMESTAMP)) / 1000000.0D)",
    "epoch_us": lambda a: f"unix_micros(CAST({a[0]} AS TIMESTAMP))",
    "unnest": lambda a: f"explode({a[0]})",
    "len": lambda a: f"size({a[0]})",
    "from_json": _from_json,
    "regexp_full_match": lambda a: f"regexp_like({a[0]}, concat('^(?:', {_regex(a[1])}, ')$'))",
    "regexp_matches": lambda a: f"regexp_like({a[0]}, {_regex(a[1])})",
    "regexp_replace": _regexp_replace,
    "md5_number_upper": lambda a: _md5_number(a[0], 0),
    "md5_number_lower": lambda a: _md5_number(a[0], 8),
    # DuckDB rtrim(s, chars); Spark's two-argument rtrim takes (chars, s): say it unambiguously.
    "rtrim": lambda a: f"trim(TRAILING {a[1]} FROM {a[0]})" if len(a) == 2 else f"rtrim({a[0]})",
    "ltrim": lambda a: f"trim(LEADING {a[1]} FROM {a[0]})" if len(a) == 2 else f"ltrim({a[0]})",
    "string_agg": _str_agg,
    "cast": _cast("CAST"),
    "try_cast": _cast("TRY_CAST"),
}

# Macros whose DuckDB body does unsigned 64-bit bit arithmetic, which Spark (no unsigned types;
# UBIGINT reads as DECIMAL(20,0)) cannot: the same values, spelled with signed BIGINT and decimals.
SPARK_MACROS: dict[str, tuple[tuple[str, ...], str]] = {
    "ip_key": (("ip",), """
      CASE WHEN ip IS NULL OR ip = '' THEN CAST(0 AS DECIMAL(20,0))
           WHEN is_ipv4(ip) THEN CAST((CAST(split_part(ip, '.', 1) AS BIGINT) << 24)
                                      | (CAST(split_part(ip, '.', 2) AS BIGINT) << 16)
                                      | (CAST(split_part(ip, '.', 3) AS BIGINT) << 8)
                                      | CAST(split_part(ip, '.', 4) AS BIGINT) AS DECIMAL(20,0))
           ELSE md5_number_upper(lower(ip))
                + CASE WHEN md5_number_upper(lower(ip)) < 9223372036854775808
                       THEN CAST(9223372036854775808 AS DECIMAL(20,0)) ELSE CAST(0 AS DECIMAL(20,0)) END END"""),
    # The session time zone is UTC (spark.py): the naive ts reads as UTC, and the shifted
    # timestamp's date and hour, read in UTC, are the zone's local ones.
    "utc_to_local": (("ts", "zone"), "from_utc_timestamp(ts, zone)"),
    "ip_str": (("k",), """
      CASE WHEN k < 4294967296 THEN concat_ws('.',
        CAST((CAST(k AS BIGINT) >> 24) & 255 AS STRING), CAST((CAST(k AS BIGINT) >> 16) & 255 AS STRING),
        CAST((CAST(k AS BIGINT) >> 8) & 255 AS STRING), CAST(CAST(k AS BIGINT) & 255 AS STRING)) END"""),
}

_MACRO = re.compile(r"CREATE\s+OR\s+REPLACE\s+MACRO\s+(\w+)\s*\(([^)]*)\)\s+AS\s+(.*?);\s*(?=CREATE|$)", re.S | re.I)


def duckdb_macros(text: str = schema.MACROS) -> dict[str, tuple[tuple[str, ...], str]]:
    """name -> (parameters, body) of every `CREATE OR REPLACE MACRO` in `text`."""
    return {m.group(1).lower(): (tuple(p.strip() for p in m.group(2).split(",") if p.strip()), m.group(3).strip())
            for m in _MACRO.finditer(text)}


@lru_cache(maxsize=1)
def spark_macros() -> dict[str, tuple[tuple[str, ...], str]]:
    """schema.MACROS for Spark: bodies translated (in order, so a macro may use an earlier one)."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for name, (params, body) in duckdb_macros().items():
        params, body = SPARK_MACROS.get(name, (params, body))
        out[name] = (params, _translate(tokenize(body), out))
    return out


# -- the translation ------------------------------------------------------------------------------
_ORDER_END = {"LIMIT", "OFFSET", "ROWS", "RANGE", "GROUPS", "UNION", "EXCEPT", "INTERSECT", "WINDOW",
              "QUALIFY", "FETCH"}


def _nulls_last(toks: Tokens) -> Tokens:
    """Add NULLS LAST to every ORDER BY item without a NULLS clause (DuckDB's default order)."""
    out: Tokens = []
    i = 0
    n = len(toks)
    while i < n:
        out.append(toks[i])
        if toks[i].upper() == "ORDER":
            j = i + 1
            while j < n and not toks[j].strip():
                j += 1
            if j < n and toks[j].upper() == "BY":
                out.extend(toks[i + 1:j + 1])
                i = j + 1
                depth, item = 0, []
                while i < n:
                    t = toks[i]
                    up = t.upper()
                    if depth == 0 and (t in (",", ")") or up in _ORDER_END):
                        break_list = t != ","
                        out.extend(_close_item(item))
                        item = []
                        if break_list:
                            break
                        out.append(t)
                        i += 1
                        continue
                    depth += (t == "(") - (t == ")")
                    item.append(t)
                    i += 1
                else:
                    out.extend(_close_item(item))
                continue
        i += 1
    return out


def _close_item(item: Tokens) -> Tokens:
    if any(t.upper() == "NULLS" for t in item) or not any(t.strip() for t in item):
        return item
    k = len(item)
    while k and not item[k - 1].strip():
        k -= 1
    return item[:k] + [" NULLS LAST"] + item[k:]


def _match(toks: Tokens, i: int) -> int:
    """Index of the ')' closing the '(' at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        depth += (toks[j] == "(") - (toks[j] == ")")
        if depth == 0:
            return j
    raise ValueError("unbalanced parentheses in SQL")


def _split_args(toks: Tokens) -> list[Tokens]:
    args: list[Tokens] = [[]]
    depth = 0
    for t in toks:
        if t == "," and depth == 0:
            args.append([])
            continue
        depth += (t == "(") - (t == ")")
        args[-1].append(t)
    return args if any(a for a in args if "".join(a).strip()) else []


def _substitute(body: str, params: tuple[str, ...], args: list[str]) -> str:
    values = {p.lower(): f"({a.strip()})" for p, a in zip(params, args)}
    return "".join(values.get(t.lower(), t) if _is_word(t) else t for t in tokenize(body))


def _translate(toks: Tokens, macros: dict[str, tuple[tuple[str, ...], str]]) -> str:
    out: list[str] = []
    i = 0
    n = len(toks)
    prev = ""  # previous non-space token
    while i < n:
        t = toks[i]
        low = t.lower()
        nxt = i + 1
        while nxt < n and not toks[nxt].strip():
            nxt += 1
        if _is_word(t) and prev != "." and nxt < n and toks[nxt] == "(" and (low in SPARK_FUNCS or low in macros):
            close = _match(toks, nxt)
            args = [_translate(a, macros).strip() for a in _split_args(toks[nxt + 1:close])]
            if low in macros:
                params, body = macros[low]
                out.append(f"({_substitute(body, params, args)})")
            else:
                out.append(SPARK_FUNCS[low](args))
            prev, i = ")", close + 1
            continue
        if low == "materialized" and prev.lower() == "as":  # WITH x AS MATERIALIZED (...): a DuckDB planner hint
            i += 1
            continue
        if t.startswith('"'):
            t = "`" + t[1:-1].replace('""', '"').replace("`", "``") + "`"
        elif t.startswith("'"):
            t = t.replace("\\", "\\\\")
        elif t == "//":
            t = " DIV "
        elif t[0].isdigit() and "." in t and "e" not in low:
            t += "D"
        elif prev == "::" and _is_word(t):
            # ::TYPE or ::TYPE[]
            j = i + 1
            if j + 1 < n and toks[j] == "[" and toks[j + 1] == "]":
                t, i = spark_type(t + "[]"), i + 2
            else:
                t = spark_type(t)
        out.append(t)
        if t.strip():
            prev = t
        i += 1
    return "".join(out)


def to_spark(sql: str) -> str:
    """`sql`, written for DuckDB (our macros included), as Spark SQL."""
    return _translate(_nulls_last(tokenize(sql)), spark_macros())
