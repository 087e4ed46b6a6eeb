"""Console output a person can read: known third-party warnings silenced narrowly, progress as plain lines in logs.

**Warnings.** torch and nerfstudio print a few dozen deprecation warnings that say nothing about a run (nerfstudio
1.1.5 on a newer torch). :func:`install_warning_filters` silences exactly those listed in :data:`KNOWN_WARNINGS`,
each by its message *and* the nerfstudio module it is attributed to, so the same warning raised from other code
(yours, another plugin's) still shows. It is called when the plugin loads (``osn_config``, which every ns-*
command imports) and by the osn-* commands. One warning cannot be told apart by module: torch attributes
"``torch.jit.script`` is deprecated" to itself whoever calls it, so it is silenced only while nerfstudio's modules
are imported (:func:`third_party_imports`, where nerfstudio's own ``@torch.jit.script`` decorators run). A user's
``python -W ...`` or ``PYTHONWARNINGS`` always wins: with either set, no filter is added.

**Progress in logs.** nerfstudio's ``LocalWriter`` draws the training table by moving the cursor up and
redrawing up to 12 lines every ``--logging.steps-per-log`` steps; written to a file (CI, ``nohup``, a notebook)
that is 12 new lines every 10 steps. ``progress_writer.TrainingProgressWriter`` is that writer on a terminal and
prints one plain line now and then elsewhere (step, %, ETA, train rays/s, loss): at every 5 % of the run, at least
once a minute, and at the last step. The osn method names it as its local writer (``--logging.local-writer``'s target in
``osn_config``), the extension point nerfstudio's ``LocalWriterConfig._target`` offers, so nothing of nerfstudio
is patched and other methods are unaffected. :func:`progress_bar` and :func:`track` do the same for rich progress
bars: rich on a terminal, a line now and then elsewhere (rich itself prints a bar in a log only when it ends).

This module is imported by every ns-* command through the plugin's entry point and by the osn-* commands: it imports
only the standard library and rich.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Type, TypeVar, Union

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass(frozen=True)
class KnownWarning:
    """A third-party warning that says nothing about the run, told apart by message and emitting module."""

    message: str
    """Regular expression matched at the start of the message (case-insensitive, as ``warnings`` does)."""
    category: Type[Warning]
    module: str
    """Regular expression matched against the whole name of the module the warning is attributed to."""
    reason: str
    """Why it is harmless (for the reader of this list)."""

    def add_filter(self) -> None:
        warnings.filterwarnings("ignore", message=self.message, category=self.category, module=self.module)


KNOWN_WARNINGS = (
    KnownWarning(
        r"Using a non-tuple sequence for multidimensional indexing is deprecated",
        UserWarning,
        r"nerfstudio\.cameras\.cameras\Z",
        "nerfstudio's Cameras index tensors with lists of tensors (torch deprecation); every ray generation",
    ),
    KnownWarning(
        r"Converting a tensor with requires_grad=True to a scalar",
        UserWarning,
        r"nerfstudio\.utils\.writer\Z",
        "nerfstudio's trainer logs the loss dictionary without detaching it",
    ),
    KnownWarning(
        r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
        FutureWarning,
        r"nerfstudio\.engine\.trainer\Z",
        "nerfstudio's trainer makes its (disabled on CPU) gradient scaler with the old API",
    ),
    KnownWarning(
        r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated",
        FutureWarning,
        r"nerfstudio(\.[\w.]+)?\Z",
        "decorators of nerfstudio's field components (at import)",
    ),
)
"""Warnings silenced by :func:`install_warning_filters` for the whole process: each is attributed to a nerfstudio
module, so only nerfstudio's own occurrence matches."""

IMPORT_WARNINGS = (
    KnownWarning(
        r"`torch\.jit\.script` is deprecated",
        FutureWarning,
        r"torch\.jit\._script\Z",
        "nerfstudio decorates functions with @torch.jit.script at import; torch attributes it to itself",
    ),
)
"""Warnings silenced only inside :func:`third_party_imports` (their module names torch, not the caller)."""


def user_chose_warnings() -> bool:
    """Whether the user set warning filters (``python -W`` or ``PYTHONWARNINGS``): then theirs are left alone."""
    return bool(sys.warnoptions)


def install_warning_filters() -> bool:
    """Silence :data:`KNOWN_WARNINGS` (idempotent); returns whether filters were added (not when the user chose)."""
    if user_chose_warnings():
        return False
    for known in KNOWN_WARNINGS:
        known.add_filter()
    return True


@contextmanager
def third_party_imports() -> Iterator[None]:
    """Install the filters, and while active also silence :data:`IMPORT_WARNINGS`: wrap nerfstudio imports in it.

    Only the filters added here are taken out afterwards; filters that the imported modules add stay.
    """
    if not install_warning_filters():
        yield
        return
    added = []
    for known in IMPORT_WARNINGS:
        known.add_filter()
        added.append(warnings.filters[0])
    try:
        yield
    finally:
        for entry in added:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        install_warning_filters()  # filterwarnings marks the filter list as changed, so the removal takes effect


def output_is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stdout) is an interactive terminal, where output may be redrawn."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 12s``, ``1h 05m``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


T = TypeVar("T")


class LineProgress:
    """The part of rich's ``Progress`` that OSN uses, printing a line per task now and then instead of a bar.

    A task's line (``description: 3/8 (38%), 1m 02s``) is printed when it completes and, while it runs, when
    ``every_s`` seconds passed since its last line.
    """

    def __init__(self, console: Optional[Console] = None, every_s: float = 30.0):
        self.console = console or Console(stderr=True)
        self.every_s = every_s
        self.tasks: List[Dict[str, Any]] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for task in self.tasks:
            if task["completed"] and not task["printed_done"]:
                self._print(task)

    def add_task(self, description: str, total: Optional[float] = None, completed: float = 0, **_: Any) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": completed, "start": now,
                           "last": now, "printed_done": False})
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: Optional[float] = None, completed: Optional[float] = None,
               advance: Optional[float] = None, description: Optional[str] = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if description is not None:
            task["description"] = description
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        finished = task["total"] is not None and task["completed"] >= task["total"]
        if finished and not task["printed_done"]:
            self._print(task)
        elif not finished and time.monotonic() - task["last"] >= self.every_s:
            self._print(task)

    def track(
        self, sequence: Iterable[T], total: Optional[float] = None, description: str = "Working..."
    ) -> Iterator[T]:
        if total is None and isinstance(sequence, Sequence):
            total = len(sequence)
        task = self.add_task(description, total=total)
        for item in sequence:
            yield item
            self.advance(task)

    def _print(self, task: Dict[str, Any]) -> None:
        now = time.monotonic()
        total, completed = task["total"], task["completed"]
        count = f"{completed:g}/{total:g} ({100 * completed / total:.0f}%)" if total else f"{completed:g}"
        self.console.print(f"{task['description']}: {count}, {format_duration(now - task['start'])}",
                           markup=False, highlight=False, soft_wrap=True)
        task["last"] = now
        task["printed_done"] = total is not None and completed >= total


def progress_bar(console: Optional[Console] = None, transient: bool = False) -> Union[Progress, LineProgress]:
    """A rich progress display (description, bar, count, elapsed, remaining) on a terminal; elsewhere a
    :class:`LineProgress` that prints a line per task now and then. Use it as a context manager."""
    console = console or Console(stderr=True)
    if not console.is_interactive:
        return LineProgress(console)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def track(sequence: Iterable[T], description: str, total: Optional[float] = None, console: Optional[Console] = None,
          transient: bool = False) -> Iterator[T]:
    """``rich.progress.track`` through :func:`progress_bar`: a bar on a terminal, a line now and then elsewhere."""
    with progress_bar(console, transient=transient) as progress:
        yield from progress.track(sequence, total=total, description=description)
