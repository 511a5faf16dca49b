"""Progress bars on stderr (rich), silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol


class Tick(Protocol):
    def __call__(self, advance: float = 1, total: float | None = None) -> None: ...


def enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextmanager
def bar(label: str, total: float | None, quiet: bool = False) -> Iterator[Tick]:
    """A progress bar; yields `tick(advance=1, total=None)`."""
    if not enabled(quiet):
        yield lambda advance=1, total=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as p:
        task = p.add_task(label, total=total)

        def tick(advance: float = 1, total: float | None = None) -> None:
            if total is not None:
                p.update(task, total=total)
            p.advance(task, advance)

        yield tick
