"""Training on several processes: the agreement check between processes, and two gloo CPU processes training a tiny
scene through both phases with osn-train, then resuming."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import latest_run, tiny_train_args
from osn_nerfstudio import distributed

STEPS, BOOTSTRAP, ROUND = 240, 120, 60
RESUMED_STEPS = 300
AGREE = "The 2 training processes hold identical fields and scale networks."


def small_module() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    module.register_buffer("render_scales", torch.ones(3))
    return module


def test_fingerprints_name_exactly_the_tensors_that_differ():
    first, second = small_module(), small_module()
    same = [distributed.fingerprints(first), distributed.fingerprints(second)]
    assert distributed.disagreeing_tensors(first, same) == []
    with torch.no_grad():
        second[2].bias += 1e-7  # one float's last bits
        second.render_scales[1] = 2.0
        swapped = second[0].weight.flatten().clone()
        second[0].weight.copy_(swapped.flip(0).reshape(4, 3))  # same values, other order
    gathered = [distributed.fingerprints(first), distributed.fingerprints(second)]
    assert distributed.disagreeing_tensors(first, gathered) == ["0.weight", "2.bias", "render_scales"]


def agreement_worker(rank: int, url: str, broadcast: bool, results) -> None:
    """Rank 1 holds one bias entry that rank 0 does not; with ``broadcast`` rank 0's values are sent first."""
    dist.init_process_group("gloo", init_method=url, world_size=2, rank=rank)
    try:
        module = small_module()
        if rank == 1:
            with torch.no_grad():
                module[0].bias[0] += 1.0
        if broadcast:
            distributed.broadcast_from_main([*module.parameters(), *module.buffers()])
        try:
            distributed.check_processes_agree(module, "The module")
            results[rank] = "agree"
        except RuntimeError as error:
            results[rank] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("broadcast", [True, False])
def test_broadcast_makes_processes_agree_and_the_check_names_what_differs(broadcast: bool):
    results = mp.Manager().dict()
    url = f"tcp://127.0.0.1:{distributed.free_port()}"
    mp.spawn(agreement_worker, nprocs=2, args=(url, broadcast, results))
    if broadcast:
        assert results[0] == results[1] == "agree"
    else:
        assert results[0] == results[1] == "The module differs between the 2 training processes: 0.bias"


def train(args, output_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_cpu_processes_train_through_both_phases_and_resume(tiny_scene: Path, tmp_path: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    args = tiny_train_args(tiny_scene, tmp_path, steps=STEPS, bootstrap=BOOTSTRAP, steps_per_round=ROUND)
    args += ["--machine.num-devices", "2", "--machine.device-type", "cpu"]
    first = train(args, tmp_path)
    assert AGREE in first.stdout
    assert f"step {STEPS - 1}: scale network refit" in first.stdout  # the alternation phase ran
    run = latest_run(tmp_path)
    checkpoints = run / "nerfstudio_models"
    assert [p.name for p in checkpoints.iterdir()] == [f"step-{STEPS - 1:09d}.ckpt"]
    state = torch.load(checkpoints / f"step-{STEPS - 1:09d}.ckpt", map_location="cpu", weights_only=True)
    assert state["step"] == STEPS - 1

    # --max-num-iterations and --steps-per-save
    resumed_args = [a if a != str(STEPS) else str(RESUMED_STEPS) for a in args]
    resumed = train([*resumed_args, "--load-dir", str(checkpoints), "--timestamp", run.name], tmp_path)
    assert f"Resuming at step {STEPS}" in resumed.stdout
    assert f"step {RESUMED_STEPS - 1}: scale network refit" in resumed.stdout and AGREE in resumed.stdout
    assert (checkpoints / f"step-{RESUMED_STEPS - 1:09d}.ckpt").is_file()

    # the checkpoint of several processes serves the single-process tools (viewer, ns-eval, ns-render)
    _, pipeline, _, step = eval_setup(run / "config.yml", test_mode="test")
    assert step == RESUMED_STEPS - 1
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    outputs = pipeline.model.get_outputs_for_camera(camera)
    assert torch.isfinite(outputs["rgb"]).all() and float(outputs["accumulation"].mean()) > 0.5
