"""What every stage of osn-process-data shares: its error type, console and progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

CONSOLE = Console(stderr=True)
"""Progress and reports go to stderr, as for the other osn-* commands."""


class ProcessDataError(ValueError):
    """Input osn-process-data cannot use. The message names the file, frame or object and what to do."""


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar for one long stage; yields the function that advances it by one step."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # without a terminal (logs, pipes) a bar only adds blank lines
    with Progress(*columns, console=CONSOLE, transient=True, disable=not CONSOLE.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
