"""Readable console output (osn_nerfstudio/console.py): narrow warning filters, progress lines off a terminal."""

from __future__ import annotations

import io
import re
import sys
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from nerfstudio.configs.base_config import LocalWriterConfig
from nerfstudio.utils import writer as ns_writer

from conftest import TINY_STEPS, tiny_run_output
from osn_nerfstudio import console
from osn_nerfstudio.console import (
    KNOWN_WARNINGS,
    LineProgress,
    install_warning_filters,
    progress_bar,
    third_party_imports,
)
from osn_nerfstudio.progress_writer import TrainingProgressWriter

OBSERVED = [
    # (message, category, module) as nerfstudio 1.1.5 on this torch prints them (a short demo training and ns-eval)
    ("Using a non-tuple sequence for multidimensional indexing is deprecated and will be changed in pytorch 2.9; "
     "use x[tuple(seq)] instead of x[seq].", UserWarning, "nerfstudio.cameras.cameras"),
    ("Converting a tensor with requires_grad=True to a scalar may lead to unexpected behavior.\nConsider using "
     "tensor.detach() first.", UserWarning, "nerfstudio.utils.writer"),
    ("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead.",
     FutureWarning, "nerfstudio.engine.trainer"),
    ("`torch.cuda.amp.custom_fwd(args...)` is deprecated. Please use `torch.amp.custom_fwd(args..., "
     "device_type='cuda')` instead.", FutureWarning, "nerfstudio.field_components.activations"),
    ("`torch.cuda.amp.custom_bwd(args...)` is deprecated. Please use `torch.amp.custom_bwd(args..., "
     "device_type='cuda')` instead.", FutureWarning, "nerfstudio.field_components.activations"),
]

CURSOR_MOVES = re.compile(r"\x1b\[\d*[ABCDEFGHJK]")
"""ANSI escape codes that move the cursor or erase: what a redrawn table writes."""


def shown(emit) -> list:
    """Messages of the warnings ``emit()`` shows with the plugin's filters in front of "always show everything"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install_warning_filters()
        emit()
    return [str(w.message) for w in caught]


def emit_as(message: str, category, module: str) -> None:
    warnings.warn_explicit(message, category, filename=module.replace(".", "/") + ".py", lineno=1, module=module)


@pytest.fixture(autouse=True)
def no_user_warning_options(monkeypatch):
    """As when no -W / PYTHONWARNINGS is given (pytest's own -W options do not reach sys.warnoptions anyway)."""
    monkeypatch.setattr(sys, "warnoptions", [])


def test_known_warnings_are_silenced_by_message_and_module():
    for message, category, module in OBSERVED:
        assert shown(partial(emit_as, message, category, module)) == [], message
    assert len(OBSERVED) >= len(KNOWN_WARNINGS)


def test_the_same_warnings_from_other_code_still_show():
    for message, category, module in OBSERVED:
        # same message and category from a module that is not nerfstudio's (user code, another plugin)
        for other in ("my_project.cameras", "osn_nerfstudio.osn_model", "nerfstudio_extra.cameras", "__main__"):
            assert shown(partial(emit_as, message, category, other)) == [message], (message, other)
        # another message of the same category from the same nerfstudio module
        unrelated = f"{category.__name__} about something else"
        assert shown(partial(emit_as, unrelated, category, module)) == [unrelated]
    # the plugin's own warnings are not touched
    assert shown(partial(emit_as, "Using a non-tuple sequence", UserWarning, "osn_nerfstudio.console")) != []


def test_real_nerfstudio_ray_generation_warns_only_without_the_filters():
    from nerfstudio.cameras.cameras import Cameras

    cameras = Cameras(camera_to_worlds=torch.eye(4)[None, :3].repeat(2, 1, 1), fx=20.0, fy=20.0, cx=8.0, cy=6.0,
                      width=16, height=12)

    def generate():
        cameras.generate_rays(camera_indices=torch.tensor([[0], [1]]), coords=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate()
    unfiltered = [str(w.message) for w in caught]
    assert any("non-tuple sequence" in m for m in unfiltered), "this torch no longer warns: update OBSERVED"
    assert not any("non-tuple sequence" in m for m in shown(generate))


def test_jit_script_warning_is_silenced_only_while_importing():
    def scripted():
        torch.jit.script(lambda_free_add)

    inside, outside = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with third_party_imports():
            scripted()
            warnings.filterwarnings("ignore", message="a filter an imported module adds")
            inside = [str(w.message) for w in caught]
        scripted()
        outside = [str(w.message) for w in caught]
        kept = any(f[1] is not None and f[1].pattern == "a filter an imported module adds" for f in warnings.filters)
    assert not any("torch.jit.script" in m for m in inside)
    assert any("torch.jit.script" in m for m in outside), "user code calling torch.jit.script must still be warned"
    assert kept, "filters that imported modules add stay"


def lambda_free_add(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def test_user_warning_options_win(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", ["default"])
    with warnings.catch_warnings():
        before = list(warnings.filters)
        assert install_warning_filters() is False
        with third_party_imports():
            assert warnings.filters == before
        assert warnings.filters == before


@pytest.fixture
def training_buffer(monkeypatch):
    """nerfstudio's writer state for a 2400-step run logged every 10 steps (restored afterwards)."""
    monkeypatch.setattr(ns_writer, "GLOBAL_BUFFER", {"max_iter": 2400, "steps_per_log": 10, "events": {}})
    monkeypatch.setattr(ns_writer, "EVENT_STORAGE", [])


def train(progress_writer: TrainingProgressWriter, steps: int, clock=None) -> None:
    """Feed the writer what nerfstudio's trainer puts for each step."""
    for step in range(steps):
        ns_writer.GLOBAL_BUFFER["step"] = step
        ns_writer.EVENT_STORAGE.clear()
        ns_writer.EVENT_STORAGE.append({"name": "Train Iter (time)", "event": 0.1, "step": step})
        ns_writer.EVENT_STORAGE.append({"name": "ETA (time)", "event": 0.1 * (2400 - step), "step": step})
        if step > 1:
            ns_writer.EVENT_STORAGE.append({"name": "Train Rays / Sec", "event": 6840.0, "step": step})
        if step % 10 == 0:
            loss = torch.tensor(0.5, requires_grad=True) * 2  # as the trainer logs it: attached to the graph
            ns_writer.EVENT_STORAGE.append({"name": "Train Loss", "event": loss, "step": step})
        if clock is not None:
            clock[0] += 1.0
        progress_writer.write_stats_log(step)


def test_progress_lines_now_and_then_without_a_terminal(training_buffer, capsys):
    progress_writer = TrainingProgressWriter(LocalWriterConfig(enable=True), terminal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the loss must not warn about requires_grad
        train(progress_writer, 2400)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert not CURSOR_MOVES.search(out) and "\x1b" not in out
    assert 18 <= len(lines) <= 22, lines  # every 5 % of the run, not every logged step (240 of them)
    assert all(re.match(r"\[train\] step \d+/2400 \(\d+%\)", line) for line in lines)
    assert lines[0].startswith("[train] step 1/2400 (0%)") and lines[-1].startswith("[train] step 2400/2400 (100%)")
    middle = lines[len(lines) // 2]
    assert re.search(r"ETA \d+m \d\ds", middle) and "6.84 K train rays/s" in middle and "loss 1" in middle


def test_a_line_at_least_once_a_minute_on_slow_runs(training_buffer, capsys, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0] * 7.0)  # 7 s a step: 70 s between logged steps
    progress_writer = TrainingProgressWriter(LocalWriterConfig(enable=True), terminal=False)
    train(progress_writer, 200, clock)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20  # every logged step (0, 10, ..., 190): more than a minute apart each


def test_on_a_terminal_the_table_is_nerfstudios(training_buffer, capsys):
    progress_writer = TrainingProgressWriter(LocalWriterConfig(enable=True), terminal=True)
    train(progress_writer, 30)
    out = capsys.readouterr().out
    assert "Step (% Done)" in out and CURSOR_MOVES.search(out) and "[train]" not in out


def test_the_writer_asks_stdout_whether_it_is_a_terminal(monkeypatch):
    class Stream(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (True, False):
        monkeypatch.setattr(sys, "stdout", Stream(tty))
        assert TrainingProgressWriter(LocalWriterConfig(enable=True)).terminal is tty
    monkeypatch.setattr(sys, "stdout", object())  # no isatty at all
    assert console.output_is_terminal() is False


def test_progress_bars_print_lines_without_a_terminal(monkeypatch):
    out = io.StringIO()
    clock = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    progress = progress_bar(Console(file=out, force_terminal=False))
    assert isinstance(progress, LineProgress)
    with progress:
        task = progress.add_task("Rendering", total=8)
        for _ in range(8):
            clock[0] += 10.0  # 10 s an image: a line every 30 s, and one at the end
            progress.advance(task)
        for _ in progress.track(range(3), description="Sampling"):
            pass
    lines = out.getvalue().splitlines()
    assert lines == ["Rendering: 3/8 (38%), 30s", "Rendering: 6/8 (75%), 1m 00s", "Rendering: 8/8 (100%), 1m 20s",
                     "Sampling: 3/3 (100%), 0s"]
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(progress_bar(terminal), Progress)


def test_tiny_training_output_is_readable(tiny_run: Path):
    """The tiny run's osn-train, its output captured (not a terminal): few warnings, progress lines, no redrawing."""
    stdout, stderr = tiny_run_output(tiny_run)
    warning_lines = [line for line in (stdout + stderr).splitlines() if "Warning" in line]
    assert len(warning_lines) <= 5, "\n".join(warning_lines)
    assert not CURSOR_MOVES.search(stdout + stderr)
    progress = [line for line in stdout.splitlines() if line.startswith("[train] step ")]
    assert 3 <= len(progress) <= 22, progress
    assert progress[-1].startswith(f"[train] step {TINY_STEPS}/{TINY_STEPS} (100%)")
    assert "Step (% Done)" not in stdout
