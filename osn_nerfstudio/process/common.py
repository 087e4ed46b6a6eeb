"""What every stage of osn-process-data shares: its error type, console and progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

from osn_nerfstudio import console

CONSOLE = Console(stderr=True)
"""Progress and reports go to stderr, as for the other osn-* commands."""


class ProcessDataError(ValueError):
    """Input osn-process-data cannot use. The message names the file, frame or object and what to do."""


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar for one long stage (a line now and then without a terminal); yields the function that advances
    it by one step."""
    with console.progress_bar(CONSOLE, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
