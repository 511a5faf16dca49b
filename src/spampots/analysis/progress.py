"""Progress on stderr (rich), silent when stderr is not a terminal or with --quiet.

Two shapes:

* :func:`bar`: one countable job (segments compacted, addresses enriched, days written):
  ``tick(advance)`` as each piece is done.
* :func:`steps`: a job made of named steps (the report: base tables, enrichment, each table),
  shown as "label  step k of n" with the name of the step running, and, when the caller gives
  a `poll` (DuckDB's ``con.query_progress``), the percent done of the query running now, read
  from a thread twice a second: a single long query is not a frozen screen.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol


class Tick(Protocol):
    def __call__(self, advance: float = 1, total: float | None = None) -> None: ...


class Step(Protocol):
    def __call__(self, name: str, total: int | None = None) -> None:
        """Start step `name` (the one before it is done); `total`: the number of steps, once known."""


def enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _progress(*columns: object):  # -> rich.progress.Progress, imported only when shown
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), *(columns or (MofNCompleteColumn(),)),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


@contextmanager
def bar(label: str, total: float | None, quiet: bool = False) -> Iterator[Tick]:
    """A progress bar; yields `tick(advance=1, total=None)`."""
    if not enabled(quiet):
        yield lambda advance=1, total=None: None
        return
    with _progress() as p:
        task = p.add_task(label, total=total)

        def tick(advance: float = 1, total: float | None = None) -> None:
            if total is not None:
                p.update(task, total=total)
            p.advance(task, advance)

        yield tick


@contextmanager
def steps(label: str, quiet: bool = False, poll: Optional[Callable[[], float]] = None,
          interval: float = 0.5) -> Iterator[Step]:
    """Named steps of one job; yields `step(name, total=None)`.

    `poll()`: percent done of the step's running work, or a negative number when nothing runs
    (DuckDB's query_progress); called from a thread every `interval` seconds.
    """
    if not enabled(quiet):
        yield lambda name, total=None: None
        return
    from rich.progress import TextColumn

    with _progress(TextColumn("{task.fields[where]}")) as p:
        task = p.add_task(label, total=None, where="")
        state = {"done": -1, "total": None, "name": ""}
        lock = threading.Lock()
        stop = threading.Event()

        def show(pct: float | None = None, refresh: bool = False) -> None:
            with lock:
                done, total, name = state["done"], state["total"], state["name"]
            where = f"step {done + 1}" + (f" of {total}" if total else "") + f": {name}"
            if pct is not None and pct >= 0:
                where += f" ({pct:.0f}%)"
            # the bar advances within a step by the running query's share of it
            p.update(task, total=total, completed=max(done, 0) + (min(pct, 100.0) / 100 if pct and pct > 0 else 0),
                     where=where, refresh=refresh)

        def step(name: str, total: int | None = None) -> None:
            with lock:
                state["done"] += 1
                state["name"] = name
                if total is not None:
                    state["total"] = total
            show(refresh=True)  # every step is drawn at least once, however fast it goes

        def watch() -> None:
            while not stop.wait(interval):
                try:
                    pct = poll() if poll is not None else None
                except Exception:  # the connection closed under us: nothing more to show
                    return
                show(pct)

        th = threading.Thread(target=watch, name="progress", daemon=True)
        th.start()
        try:
            yield step
        finally:
            stop.set()
            th.join()
