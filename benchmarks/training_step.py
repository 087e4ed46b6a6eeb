"""Time one OSN training step (forward, backward, Adam step) on the default demo scene, per phase.

    python benchmarks/training_step.py [--steps 20] [--threads 1]

The pipeline is built from the ``osn`` method's defaults on the CPU (1024 pixel rays + 256 keypoint rays
per batch, the default 128x96 demo scene with 3 foreground objects and the background). Phases:

* ``bootstrap``: step 0, each ray renders only its labelled object;
* ``alternation``: step ``bootstrap_steps``, composite renders at the scene's true scales (falling back to
  the middle of each object's scale range when the scene has none), plus the alone renders.

Phases run in alternating blocks of steps, so a machine shared with other work slows both alike; the
table gives the median and the fastest block. The load average is printed to judge the numbers by.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import warnings

import torch
import tyro
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.pipelines.base_pipeline import VanillaPipeline

from osn_nerfstudio.data.demo_scene import ensure_demo_scene
from osn_nerfstudio.osn_config import osn_method

Phase = Literal["bootstrap", "alternation"]


@dataclass
class BenchmarkArgs:
    """OSN training-step benchmark."""

    steps: int = 20
    """Timed steps per phase (after the warm-up), run in blocks of ``block`` that alternate between phases."""
    block: int = 5
    """Steps per timed block; phases alternate block by block."""
    warmup: int = 3
    """Untimed steps per phase first (allocator and thread pools warm up)."""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice). On a machine shared with other work one thread can be faster."""
    cache_dir: Optional[Path] = None
    """Where the demo scene is generated or reused (default: a temporary folder, or $OSN_CACHE_DIR when set)."""
    seed: int = 0
    """Seed for the fields' initialisation and the ray batches."""


def machine_info() -> str:
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return (
        f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    return "/".join(f"{load:.1f}" for load in os.getloadavg())


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_pipeline(scene: Path) -> Tuple[VanillaPipeline, Optimizers]:
    """The ``osn`` method's pipeline on the CPU, in training mode, and its optimizers as ``ns-train`` builds them."""
    config = copy.deepcopy(osn_method.config)
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.dataparser.data = scene
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.train()
    return pipeline, Optimizers(config.optimizers, pipeline.get_param_groups())


def alternation_scales(model) -> torch.Tensor:
    """[configurations, K] the scene's true scales, or the log-midpoint of every scale range."""
    if not torch.isnan(model.true_scales).any():
        scales = model.true_scales
    else:
        scales = (model.scale_range.log().mean(-1)).exp()
        scales[0] = 1.0
    return scales.expand_as(model.train_scales)


def enter_phase(model, phase: Phase) -> None:
    if phase == "bootstrap":
        model.step = 0
        model.train_scales.fill_(1.0)
    else:
        model.step = model.config.bootstrap_steps
        model.train_scales.copy_(alternation_scales(model))


def training_step(pipeline: VanillaPipeline, optimizers: Optimizers, step: int) -> None:
    """What nerfstudio's trainer does in one iteration (without mixed precision or gradient clipping)."""
    optimizers.zero_grad_all()
    _, losses, _ = pipeline.get_train_loss_dict(step)
    sum(losses.values()).backward()
    optimizers.optimizer_step_all()


def time_block(pipeline: VanillaPipeline, optimizers: Optimizers, phase: Phase, steps: int) -> float:
    """Seconds per step over ``steps`` steps of ``phase``."""
    enter_phase(pipeline.model, phase)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(pipeline, optimizers, pipeline.model.step)
    return (time.perf_counter() - start) / steps


def samples_per_ray(pipeline) -> int:
    """Samples per object and ray at which the fields are fully evaluated (coarse density passes not counted)."""
    model = pipeline.model
    enter_phase(model, "alternation")
    ray_bundle, _ = pipeline.datamanager.next_train(0)
    with torch.no_grad():
        return int(model.sample_objects(ray_bundle[:8], model.scales_per_ray(8, "cpu")).density.shape[-1])


def main(args: BenchmarkArgs) -> None:
    # nerfstudio's ray generation indexes with lists, which torch warns about on every batch
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        cache_dir = args.cache_dir or Path(os.environ.get("OSN_CACHE_DIR", temporary))
        pipeline, optimizers = build_pipeline(ensure_demo_scene(cache_dir=cache_dir))
    model = pipeline.model
    rays = pipeline.datamanager.config.train_num_rays_per_batch + pipeline.datamanager.config.num_keypoint_rays
    phases: List[Phase] = ["bootstrap", "alternation"]

    for phase in phases:
        time_block(pipeline, optimizers, phase, args.warmup)
    seconds: Dict[Phase, List[float]] = {phase: [] for phase in phases}
    for _ in range(max(1, args.steps // args.block)):
        for phase in phases:
            seconds[phase].append(time_block(pipeline, optimizers, phase, args.block))

    print(machine_info())
    print(f"load average {load_average()} | {model.num_objects} objects | {rays} rays per step")
    print(
        f"samples per ray and object: {model.config.num_coarse_samples} coarse (density only) + "
        f"{samples_per_ray(pipeline)} evaluated"
    )
    print(f"{'phase':<12} {'median ms/step':>15} {'best ms/step':>13} {'rays/s':>9}")
    for phase in phases:
        median, best = statistics.median(seconds[phase]), min(seconds[phase])
        print(f"{phase:<12} {1e3 * median:>15.1f} {1e3 * best:>13.1f} {rays / median:>9.0f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main(tyro.cli(BenchmarkArgs))
