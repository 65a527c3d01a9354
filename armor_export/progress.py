"""Progress reporting for long work, decoupled from any UI (the CLI plugs in rich bars)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **info) -> None: ...


class Reporter(Protocol):
    def task(self, description: str, total: int | None): ...


class _NullTask:
    def advance(self, n: int = 1, **info) -> None:
        pass


class NullReporter:
    """Reports nothing (library default)."""

    @contextmanager
    def task(self, description: str, total: int | None):
        yield _NullTask()


class RichReporter:
    """rich progress bars, one per task, on stderr."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=self.console, transient=False) as prog:
            tid = prog.add_task(description, total=total, info="")

            class _Task:
                def advance(self, n: int = 1, **info) -> None:
                    text = " ".join(f"{k}={v}" for k, v in info.items())
                    prog.update(tid, advance=n, info=text)

            yield _Task()
