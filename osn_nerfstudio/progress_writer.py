"""nerfstudio's training table on a terminal, one plain line now and then in a log file (osn_nerfstudio/console.py
says why); the osn method names :class:`TrainingProgressWriter` as its local writer (``osn_config``)."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional

from nerfstudio.configs import base_config  # noqa: F401  (first: nerfstudio's writer cannot be imported before it)
from nerfstudio.utils import writer as ns_writer
from nerfstudio.utils.printing import human_format

from osn_nerfstudio.console import format_duration, output_is_terminal


def _number(value: Any) -> Optional[float]:
    """A logged scalar (float, int or tensor, maybe requiring grad) as a float, else None."""
    if hasattr(value, "detach"):
        value = value.detach()
        if value.numel() != 1:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TrainingProgressWriter(ns_writer.LocalWriter):
    """nerfstudio's local writer: its redrawn table on a terminal, one plain line now and then elsewhere.

    nerfstudio calls ``write_stats_log(step)`` after every training step with the step's events in
    ``writer.EVENT_STORAGE``. When stdout is a terminal (decided once, when the trainer makes the writer) this is
    nerfstudio's table unchanged. Otherwise a line such as ::

        [train] step 1200/2400 (50%)  ETA 4m 10s  6.84 K train rays/s  loss 0.0123

    is printed at the first logged step (every ``--logging.steps-per-log``) of each 5 % of the run, at a logged
    step when a minute passed since the last line, and at the last step; no cursor movement, no colour codes.
    """

    LINES_PER_RUN = 20
    """A line at every 1/LINES_PER_RUN of the run."""
    MAX_SILENCE_S = 60.0
    """And at least one line this often (at a logged step) on slow runs."""

    def __init__(self, config, banner_messages: Optional[List[str]] = None, terminal: Optional[bool] = None):
        super().__init__(config, banner_messages=banner_messages)
        self.terminal = output_is_terminal() if terminal is None else terminal
        self.banner_messages = list(banner_messages or [])
        """Printed once, before the first line, off a terminal (the table shows them at its foot)."""
        self.last_line_step: Optional[int] = None
        self.last_line_time = -math.inf
        self.next_line_step = 0

    def write_stats_log(self, step: int) -> None:
        if self.terminal:
            super().write_stats_log(step)
            return
        max_iter = int(ns_writer.GLOBAL_BUFFER.get("max_iter", 0)) or 1
        logged = step % int(ns_writer.GLOBAL_BUFFER.get("steps_per_log", 1) or 1) == 0
        last = step >= max_iter - 1
        now = time.monotonic()
        due = step >= self.next_line_step or now - self.last_line_time >= self.MAX_SILENCE_S
        if self.last_line_step is not None and (step <= self.last_line_step or self.last_line_step >= max_iter - 1):
            return  # the final write after training repeats no line
        if not (last or (logged and due)):
            return
        events = {event["name"]: event["event"] for event in ns_writer.EVENT_STORAGE}
        if self.last_line_step is None:
            for message in self.banner_messages:
                print(message)
        print(self.progress_line(step, max_iter, events), flush=True)
        period = max(1, math.ceil(max_iter / self.LINES_PER_RUN))
        self.next_line_step = (step // period + 1) * period
        self.last_line_step, self.last_line_time = step, now

    @staticmethod
    def progress_line(step: int, max_iter: int, events: Dict[str, Any]) -> str:
        """``[train] step N/M (P%)`` and whichever of ETA, train rays/s and loss the step logged."""
        done = min(step + 1, max_iter)
        parts = [f"[train] step {done}/{max_iter} ({100 * done / max_iter:.0f}%)"]
        eta = _number(events.get(ns_writer.EventName.ETA.value))
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        rays = _number(events.get(ns_writer.EventName.TRAIN_RAYS_PER_SEC.value))
        if rays is not None:
            parts.append(f"{human_format(rays).strip()} train rays/s")
        loss = _number(events.get("Train Loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        return "  ".join(parts)
