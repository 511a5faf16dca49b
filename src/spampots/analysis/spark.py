"""`spampots report --engine spark`: the report's metrics (metrics.py) run by Apache Spark over the lake.

The lake's Parquet is the interface: one view per table, filtered by the report's --from/--to/
--sensor, as lake.Lake.connect makes for DuckDB. :class:`SparkConnection` offers the three methods
of a DuckDB connection that metrics.run uses (execute, register, unregister), translating each
query with dialect.to_spark, so metrics.run, the enrichment (enrich.Enricher, in Python on the
distinct addresses) and the renderers are the same code for both engines.

Spark reads only the lake: event segments not yet compacted (open ones included) are not seen.
The driver needs Java 17+ and ``pip install 'spampots[spark]'``; executors need neither Python
packages of ours nor Python UDFs (every metric is SQL; the enrichment table is shipped as data).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import time

from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pyarrow as pa

from . import dialect, schema

INSTALL_HINT = "pip install 'spampots[spark]'"
JAVA_MIN = 17  # Spark 4


class SparkUnavailable(RuntimeError):
    """pyspark or Java is missing: the message says what to install."""


def check_java() -> Optional[str]:
    """None if a Java >= 17 is there for the Spark driver; else what is wrong."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not java:
        return f"--engine spark needs Java {JAVA_MIN} or later (java on PATH, or JAVA_HOME); none found"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"--engine spark: cannot run {java}: {e}"
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if m:
        major = int(m.group(2) if m.group(1) == "1" and m.group(2) else m.group(1))  # "1.8" is Java 8
        if major < JAVA_MIN:
            return f"--engine spark needs Java {JAVA_MIN} or later; {java} is Java {major}"
    return None


def _pyspark() -> Any:
    try:
        import pyspark.sql
    except ImportError:
        raise SparkUnavailable(f"--engine spark needs pyspark: {INSTALL_HINT}") from None
    return pyspark.sql


def session(master: Optional[str] = None, conf: Sequence[tuple[str, str]] = (),
            quiet: bool = True) -> tuple[Any, bool]:
    """(SparkSession, created): the active session if there is one, else a new one.

    Under spark-submit the master and settings are spark-submit's. Otherwise `master` (default
    local[*]); a local master binds the driver to 127.0.0.1 and runs no web UI, unless `conf`
    says otherwise: a report on one machine has no reason to listen on the network.
    """
    sql = _pyspark()
    active = sql.SparkSession.getActiveSession()
    if active is None:
        problem = check_java()
        if problem:
            raise SparkUnavailable(problem)
    builder = sql.SparkSession.builder.appName("spampots report")
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # a spark-submit driver: its --master rules
    if not submitted and active is None:
        master = master or "local[*]"
        builder = builder.master(master)
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # what the JVM resolves its own address to
            for k, v in (("spark.driver.host", "127.0.0.1"), ("spark.driver.bindAddress", "127.0.0.1"),
                         ("spark.ui.enabled", "false")):
                builder = builder.config(k, v)
    builder = builder.config("spark.ui.showConsoleProgress", "false" if quiet else "true")
    for k, v in conf:
        builder = builder.config(k, v)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # the JVM did not start: PySparkRuntimeError [JAVA_GATEWAY_EXITED] and kin
        raise SparkUnavailable(f"--engine spark: Spark did not start: {e}") from e
    # The lake's timestamps are naive UTC; epoch() casts them to Spark's TIMESTAMP in this zone.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    if active is None:
        spark.sparkContext.setLogLevel("ERROR" if quiet else "WARN")
    return spark, active is None


# -------------------------------------------------------------------------------------------------
class _Rows:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> Optional[tuple]:
        return self.rows[0] if self.rows else None


def _py(v: Any) -> Any:
    # DuckDB hands out UBIGINT/HUGEINT as int; Spark has them as DECIMAL(20/38, 0).
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and v.as_tuple().exponent >= 0 else float(v)
    return v


_CREATE = re.compile(r"\s*CREATE\s+OR\s+REPLACE\s+TEMP(?:ORARY)?\s+(TABLE|VIEW)\s+(\w+)\s+AS\s+(.*)\Z", re.S | re.I)


class SparkConnection:
    """The part of a DuckDB connection that metrics.run uses, on a SparkSession.

    `CREATE OR REPLACE TEMP TABLE x AS q` becomes a cached, eagerly computed temp view (the base
    tables are read many times); a TEMP VIEW stays a plain view; anything else is collected.
    """

    def __init__(self, spark: Any, *, owned: bool = False) -> None:
        self.spark = spark
        self.owned = owned  # stop the session on close()
        self._cached: dict[str, Any] = {}
        self.views: list[str] = []
        self.open_s = 0.0  # seconds taken to list the lake and create the views

    def sql(self, sql: str) -> Any:
        return self.spark.sql(dialect.to_spark(sql))

    def execute(self, sql: str) -> _Rows:
        m = _CREATE.match(sql)
        if m:
            kind, name, query = m.group(1).upper(), m.group(2), m.group(3)
            df = self.sql(query)
            old = self._cached.pop(name, None)
            if kind == "TABLE":
                df = df.cache()
                df.count()
                self._cached[name] = df
            df.createOrReplaceTempView(name)
            if old is not None:
                old.unpersist()
            self.views.append(name)
            return _Rows([])
        return _Rows([tuple(_py(v) for v in row) for row in self.sql(sql).collect()])

    def register(self, name: str, table: pa.Table) -> None:
        self.spark.createDataFrame(table).createOrReplaceTempView(name)

    def unregister(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)

    def close(self) -> None:
        for df in self._cached.values():
            df.unpersist()
        self._cached.clear()
        for name in set(self.views):
            self.spark.catalog.dropTempView(name)
        if self.owned:
            self.spark.stop()


# -- the lake --------------------------------------------------------------------------------------
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def lake_uri(lake: str | Path) -> str:
    """A local directory as a file: URI (a bare path would mean the cluster's default file system)."""
    s = str(lake)
    # Not as_uri(): Hadoop's Path takes the file: URI unencoded ("file:///a b").
    return s.rstrip("/") if _SCHEME.match(s) else "file://" + str(Path(s).resolve())


def local_path(lake: str | Path) -> Optional[Path]:
    """The lake's directory when it is on this machine (a path or a file: URI), else None."""
    s = str(lake)
    if s.startswith("file:"):
        return Path("/" + s.removeprefix("file:").lstrip("/"))
    return None if _SCHEME.match(s) else Path(s)


def _table(spark: Any, uri: str, name: str) -> Any:
    """Every lake column of table `name` (schema.lake_columns, `day` from the partition path).

    The schema is ours, not inferred: no file footer is read to plan, and a column that a file
    lacks (a field added to events.py after it was written) reads as NULL, as in DuckDB's views.
    """
    from pyspark.errors import AnalysisException

    ddl = ", ".join(f"`{c}` {dialect.spark_type(t)}" for c, t in schema.lake_columns(name.removesuffix("_sample")))
    try:
        return spark.read.schema(ddl).parquet(f"{uri}/{name}")
    except AnalysisException as e:
        if getattr(e, "getCondition", e.getErrorClass)() != "PATH_NOT_FOUND":
            raise
        return spark.createDataFrame([], ddl)  # no events of this type (yet)


@contextmanager
def _snapshot_lock(uri: str) -> Iterator[None]:
    """A local lake: list its files under the shared lock that compaction respects (lake.py)."""
    from .lake import fcntl  # None where there is no flock

    root = local_path(uri)
    if fcntl is None or root is None or not root.is_dir():
        yield
        return
    with open(root / "_compact.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
        yield


def connect(lake: str | Path, *, day_from: dt.date | None = None, day_to: dt.date | None = None,
            sensors: Sequence[str] = (), spark: Any = None, master: Optional[str] = None,
            conf: Sequence[tuple[str, str]] = (), quiet: bool = True, tz: str = "UTC") -> SparkConnection:
    """A SparkConnection with one view per lake table, filtered like Lake.connect's views
    (`day_from`/`day_to` are days in zone `tz`)."""
    from .lake import UNFILTERED

    owned = False
    if spark is None:
        spark, owned = session(master, conf, quiet)  # SparkUnavailable first, if pyspark is missing
    else:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    from pyspark.sql import functions as F
    con = SparkConnection(spark, owned=owned)
    uri = lake_uri(lake)
    cond = F.lit(True)
    for where in schema.period_where(day_from, day_to, tz):
        cond = cond & F.expr(dialect.to_spark(where))
    if sensors:
        cond = cond & F.col("sensor").isin(list(sensors))
    t = time.perf_counter()
    with _snapshot_lock(uri):
        names = list(schema.TABLES) + [f"{n}_sample" for n in schema.SAMPLED]
        for name in names:
            df = _table(spark, uri, name)
            df.filter(cond).createOrReplaceTempView(name)
            con.views.append(name)
            if name in UNFILTERED:
                df.createOrReplaceTempView(f"{name}_all")
                con.views.append(f"{name}_all")
    con.open_s = time.perf_counter() - t
    return con
