"""Shared fixtures: a tiny generated scene and a short osn training run on it, made once per test session.

The run is for the tools that work on a trained run (viewer, ns-render, ns-eval, resume); its quality is not
asserted here (tests/test_training.py trains longer and checks what the method learns).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene

REPO = Path(__file__).resolve().parents[1]
TINY_SCENE = DemoSceneConfig(seed=1, width=48, height=36, num_frames=10, num_objects=2, test_view_every=3)
TINY_STEPS, TINY_BOOTSTRAP, TINY_ROUND = 240, 120, 60


def field_optimizer(fields) -> torch.optim.Adam:
    """Adam over ObjectFields' parameter groups at the learning rates training gives them (osn_config.py): 5e-2 for
    the grids, 1e-2 for the MLP heads and codes."""
    groups = fields.param_groups()
    return torch.optim.Adam(
        [{"params": groups["object_encodings"], "lr": 5e-2}, {"params": groups["object_heads"], "lr": 1e-2}]
    )


def command(name: str) -> str:
    """Path of a console command installed beside the running interpreter (ns-train, osn-train, ...)."""
    return str(Path(sys.executable).parent / name)


def tiny_train_args(
    scene: Path,
    output_dir: Path,
    steps: int = TINY_STEPS,
    steps_per_save: int = TINY_STEPS,
    bootstrap: int = TINY_BOOTSTRAP,
    steps_per_round: int = TINY_ROUND,
    validity_candidates: int = 2048,
    rays_per_batch: int = 256,
    keypoint_rays: int = 64,
    preset: str = "demo-cpu.yaml",
) -> List[str]:
    """osn-train arguments of a tiny run (a preset in configs/, the CPU one by default; small batches, short phases)."""
    return [
        command("osn-train"),
        str(REPO / "configs" / preset),
        "--data", str(scene),
        "--output-dir", str(output_dir),
        "--experiment-name", "tiny",
        "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps_per_save),
        "--pipeline.model.bootstrap-steps", str(bootstrap),
        "--pipeline.model.steps-per-round", str(steps_per_round),
        *validity_candidate_args(validity_candidates),
        "--pipeline.datamanager.train-num-rays-per-batch", str(rays_per_batch),
        "--pipeline.datamanager.num-keypoint-rays", str(keypoint_rays),
    ]


def validity_candidate_args(count: int) -> List[str]:
    """ns-train arguments that make each refit label ``count`` candidates of each kind (uniform, inside, boundary)."""
    kinds = ("uniform", "inside", "boundary")
    return [arg for kind in kinds for arg in (f"--pipeline.model.validity.{kind}-candidates", str(count))]


def latest_run(output_dir: Path) -> Path:
    return sorted((output_dir / "tiny" / "osn").iterdir())[-1]


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    scene = tmp_path_factory.mktemp("tiny-scene") / "scene"
    make_demo_scene(scene, TINY_SCENE)
    return scene


@pytest.fixture(scope="session")
def tiny_run(tiny_scene: Path, tmp_path_factory) -> Path:
    """outputs/tiny/osn/<timestamp> of a finished tiny run (config.yml, nerfstudio_models/)."""
    output_dir = tmp_path_factory.mktemp("tiny-run")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    args = tiny_train_args(tiny_scene, output_dir)
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    keep_output(output_dir, result)
    assert result.returncode == 0, result.stderr[-4000:]
    return latest_run(output_dir)


def keep_output(output_dir: Path, result: subprocess.CompletedProcess) -> None:
    """Keep a training command's captured stdout and stderr next to its runs (``tiny_run_output`` reads them)."""
    (output_dir / "osn-train.stdout").write_text(result.stdout)
    (output_dir / "osn-train.stderr").write_text(result.stderr)


def tiny_run_output(run: Path) -> Tuple[str, str]:
    """stdout and stderr of the osn-train command that made ``run`` (the ``tiny_run`` fixture's), as captured: not a
    terminal."""
    output_dir = run.parents[2]  # output_dir/tiny/osn/<timestamp>
    return (output_dir / "osn-train.stdout").read_text(), (output_dir / "osn-train.stderr").read_text()


TRAINING_FIXTURES = {"tiny_run", "trained_run"}
"""Fixtures that train in a subprocess: the tests that use them are slow (``-m "not slow"`` leaves them out)."""


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
