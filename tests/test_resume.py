"""Checkpoints and resume: a run killed with SIGKILL resumes from its newest readable checkpoint and ends
where an uninterrupted run ends (same final step, phase and round schedule, optimiser and scale network
state continued rather than restarted)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_BOOTSTRAP, TINY_ROUND, TINY_STEPS, latest_run, tiny_train_args
from osn_nerfstudio.osn_trainer import checkpoint_step, newest_readable_checkpoint

SAVE_EVERY = 30
KILL_AFTER_STEP = TINY_BOOTSTRAP + TINY_ROUND // 2  # in the middle of the first alternation round


def wait_for_checkpoint(process: subprocess.Popen, output_dir: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        for path in output_dir.glob("tiny/osn/*/nerfstudio_models/step-*.ckpt"):
            if checkpoint_step(path) >= step:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint at step >= {step} within {timeout} s")


def refit_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"step (\d+): scale network refit", log)]


def adam_steps(state: dict) -> dict[str, int]:
    """Optimiser steps taken so far per parameter group (nerfstudio optimisers) and by the scale network."""
    counts = {}
    for group, optimiser in state["optimizers"].items():
        counts[group] = int(max(float(s["step"]) for s in optimiser["state"].values()))
    extra = next(v for k, v in state["pipeline"].items() if k.endswith("scale_network._extra_state"))
    counts["scale_network"] = int(max(float(s["step"]) for s in extra["optimizer"]["state"].values()))
    return counts


@pytest.mark.slow
def test_killed_run_resumes_and_ends_like_an_uninterrupted_run(tiny_scene: Path, tiny_run: Path, tmp_path: Path):
    output_dir = tmp_path / "outputs"
    args = tiny_train_args(tiny_scene, output_dir, steps_per_save=SAVE_EVERY)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        wait_for_checkpoint(first, output_dir, KILL_AFTER_STEP)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    run = latest_run(output_dir)
    checkpoints = run / "nerfstudio_models"
    killed_at = newest_readable_checkpoint(checkpoints)
    assert KILL_AFTER_STEP <= killed_at < TINY_STEPS - 1
    # a checkpoint torn by a kill during writing (only possible with in-place writes) must be skipped
    newest = checkpoints / f"step-{killed_at:09d}.ckpt"
    torn = checkpoints / f"step-{killed_at + SAVE_EVERY:09d}.ckpt"
    torn.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resumed = subprocess.run(
        args + ["--load-dir", str(checkpoints), "--timestamp", run.name],
        capture_output=True, text=True, timeout=900, env=env,
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert f"Skipping unreadable checkpoint {torn.name}" in " ".join(log.split())
    assert f"Resuming at step {killed_at + 1} (checkpoint step-{killed_at:09d}.ckpt)" in " ".join(log.split())
    # the schedule continues: no bootstrap refit again, every later round refit happens once
    expected = [s for s in range(TINY_BOOTSTRAP - 1, TINY_STEPS, TINY_ROUND) if s > killed_at]
    assert refit_steps(log) == expected

    final = torch.load(checkpoints / f"step-{TINY_STEPS - 1:09d}.ckpt", map_location="cpu", weights_only=True)
    reference = torch.load(
        tiny_run / "nerfstudio_models" / f"step-{TINY_STEPS - 1:09d}.ckpt", map_location="cpu", weights_only=True
    )
    assert final["step"] == reference["step"] == TINY_STEPS - 1
    assert adam_steps(final) == adam_steps(reference)
    for key in ("_model.render_scales", "_model.train_scales"):
        assert final["pipeline"][key].shape == reference["pipeline"][key].shape


def test_newest_readable_checkpoint_skips_torn_files(tmp_path: Path, capsys):
    torch.save({"step": 10}, tmp_path / "step-000000010.ckpt")
    torch.save({"step": 20}, tmp_path / "step-000000020.ckpt")
    (tmp_path / "step-000000030.ckpt").write_bytes((tmp_path / "step-000000020.ckpt").read_bytes()[:40])
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert newest_readable_checkpoint(tmp_path) == 20
    assert "step-000000030.ckpt" in capsys.readouterr().out.replace("\n", "")


def test_no_readable_checkpoint_is_a_clear_error(tmp_path: Path):
    (tmp_path / "step-000000005.ckpt").write_bytes(b"broken")
    with pytest.raises(FileNotFoundError, match="No readable step-N.ckpt"):
        newest_readable_checkpoint(tmp_path)


def test_resuming_a_finished_run_changes_nothing(tiny_scene: Path, tiny_run: Path, tmp_path: Path):
    import shutil

    output_dir = tmp_path / "outputs"
    run = output_dir / "tiny" / "osn" / tiny_run.name
    shutil.copytree(tiny_run, run)
    before = {p.name: p.read_bytes() for p in (run / "nerfstudio_models").iterdir()}
    resume = ["--load-dir", str(run / "nerfstudio_models"), "--timestamp", run.name]
    result = subprocess.run(
        tiny_train_args(tiny_scene, output_dir) + resume,
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "nothing left to train" in " ".join(result.stdout.split())
    assert {p.name: p.read_bytes() for p in (run / "nerfstudio_models").iterdir()} == before
