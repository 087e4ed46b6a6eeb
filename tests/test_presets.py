"""The presets in configs/: every flag they pass is one ns-train knows, and the GPU preset's hash-grid
fields fall back to torch and train on a machine without CUDA."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO, latest_run, tiny_train_args
from osn_nerfstudio.scripts.train_preset import preset_argv

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def parse_preset(preset: Path, extra=()):
    """The TrainerConfig ns-train would build from ``preset`` (tyro parses, nothing runs)."""
    import tyro

    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    return tyro.cli(AnnotatedBaseConfigUnion, args=preset_argv(preset, list(extra)))


def test_there_is_a_cpu_and_a_gpu_preset():
    assert {p.name for p in PRESETS} >= {"demo-cpu.yaml", "real-video-gpu.yaml"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_parses_into_an_osn_config(preset):
    config = parse_preset(preset)
    assert config.method_name == "osn"
    model = config.pipeline.model
    assert 0 < model.bootstrap_steps < config.max_num_iterations
    assert model.steps_per_round > 0


def test_gpu_preset_values():
    config = parse_preset(REPO / "configs" / "real-video-gpu.yaml")
    assert config.machine.device_type == "cuda"
    assert config.pipeline.model.fields.backbone == "hash"
    assert config.max_num_iterations == 30000


@pytest.mark.slow
def test_gpu_preset_trains_on_cpu_with_torch_hash_grids(tiny_scene, tmp_path):
    """A few steps of both phases with the GPU preset's fields and samplers, on a CPU (tcnn absent or unusable)."""
    args = tiny_train_args(
        tiny_scene, tmp_path, steps=6, steps_per_save=6, bootstrap=3, steps_per_round=3, validity_candidates=256,
        rays_per_batch=64, keypoint_rays=16, preset="real-video-gpu.yaml",
    ) + [
        "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--pipeline.model.validity.pixels-per-object", "128",
        "--pipeline.model.validity.boundary-pixels-per-object", "32",
    ]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "step 5: scale network refit" in " ".join(result.stdout.split())
    checkpoint = torch.load(next((latest_run(tmp_path) / "nerfstudio_models").glob("step-*.ckpt")), map_location="cpu")
    hash_tables = [k for k in checkpoint["pipeline"] if "fields.encoding" in k and "hash_table" in k]
    assert hash_tables, "the GPU preset's fields should be hash grids"
    assert all(torch.isfinite(v).all() for k, v in checkpoint["pipeline"].items()
               if torch.is_tensor(v) and v.is_floating_point())
