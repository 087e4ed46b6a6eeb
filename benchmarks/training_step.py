"""Time one OSN training step (forward, backward, optimizer step) on the default demo scene, per phase.

    python benchmarks/training_step.py [--steps 20] [--threads 1] [--fused-adam] [--keep-freed-memory]
    python benchmarks/training_step.py --num-objects 2 4 8   # cost as the number of objects grows

The pipeline and its optimizers are built as ``ns-train osn`` builds them, on the CPU: 1024 pixel rays and
256 keypoint rays per batch, the default demo scene (128x96, 3 foreground objects and the background).

* ``bootstrap``: step 0, each ray renders only its labelled object, alone;
* ``alternation``: step ``bootstrap_steps``, composite renders at the scene's true scales (or the log-middle
  of each scale range when the scene has none), plus every object alone.

The phases run in alternating blocks of steps, so that other work on the machine slows both alike; the table
gives the median and the fastest block. Minor page faults and system time per step show how much of a step
goes to the memory allocator handing memory back to the kernel and faulting it in again.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import os
import resource
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch
import tyro

from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
from nerfstudio.pipelines.base_pipeline import VanillaPipeline

from machine import load_average, machine_info
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, ensure_demo_scene
from osn_nerfstudio.osn_config import osn_method

Phase = Literal["bootstrap", "alternation"]
PHASES: Tuple[Phase, ...] = ("bootstrap", "alternation")


@dataclass
class BenchmarkArgs:
    """OSN training-step benchmark."""

    steps: int = 20
    """Timed steps per phase, after the warm-up."""
    block: int = 5
    """Steps per timed block; the phases alternate block by block."""
    warmup: int = 3
    """Untimed steps per phase first (allocator and thread pools warm up)."""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice). On a machine shared with other work one thread can be faster."""
    fused_adam: bool = False
    """Build the method's Adam optimizers with ``fused=True`` (one pass over each parameter per step)."""
    keep_freed_memory: bool = False
    """Tell glibc's malloc to keep freed memory (as MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
    would): large tensors are then no longer handed back to the kernel and faulted in again every step."""
    cache_dir: Optional[Path] = None
    """Where the demo scene is generated or reused (default: $OSN_CACHE_DIR, else a temporary folder)."""
    seed: int = 0
    """Seed for the fields' initialisation and the ray batches."""
    num_objects: Tuple[int, ...] = (3,)
    """Foreground objects of the generated demo scene (the background is one more); several values are
    measured one after another in this process, so their ratios compare like with like."""


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """nerfstudio's Adam config with torch's fused implementation."""

    fused: bool = True
    """One kernel per parameter and step instead of a dozen passes over it."""


def keep_freed_memory() -> None:
    """glibc malloc: serve blocks up to 32 MiB from the heap, and trim the heap only past 1 GiB of free memory."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)):
        raise RuntimeError("mallopt failed: --keep-freed-memory needs glibc")


def build_pipeline(scene: Path, fused_adam: bool) -> Tuple[VanillaPipeline, Optimizers]:
    """The ``osn`` method's pipeline on the CPU in training mode, and its optimizers as ``ns-train`` builds them."""
    config = copy.deepcopy(osn_method.config)
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.dataparser.data = scene
    if fused_adam:
        for group in config.optimizers.values():
            group["optimizer"] = FusedAdamOptimizerConfig(**vars(group["optimizer"]))
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.train()
    return pipeline, Optimizers(config.optimizers, pipeline.get_param_groups())


def alternation_scales(model) -> torch.Tensor:
    """[configurations, K]: the scene's true scales, or the log-middle of every object's scale range."""
    if not torch.isnan(model.true_scales).any():
        scales = model.true_scales.clone()
    else:
        scales = model.scale_range.log().mean(-1).exp()
        scales[0] = 1.0
    return scales.expand_as(model.train_scales)


def enter_phase(model, phase: Phase) -> None:
    if phase == "bootstrap":
        model.step = 0
        model.train_scales.fill_(1.0)
    else:
        model.step = model.config.bootstrap_steps
        model.train_scales.copy_(alternation_scales(model))


def training_step(pipeline: VanillaPipeline, optimizers: Optimizers) -> None:
    """What nerfstudio's trainer does in one iteration (without mixed precision or gradient clipping)."""
    optimizers.zero_grad_all()
    _, losses, _ = pipeline.get_train_loss_dict(pipeline.model.step)
    sum(losses.values()).backward()
    optimizers.optimizer_step_all()


@dataclass
class BlockTimes:
    """Per-step averages over one timed block of steps."""

    seconds: float
    page_faults: float
    system_seconds: float


def time_block(pipeline: VanillaPipeline, optimizers: Optimizers, phase: Phase, steps: int) -> BlockTimes:
    """Per-step wall time, minor page faults and system CPU time over ``steps`` steps of ``phase``."""
    enter_phase(pipeline.model, phase)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(pipeline, optimizers)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return BlockTimes(
        seconds / steps, (after.ru_minflt - usage.ru_minflt) / steps, (after.ru_stime - usage.ru_stime) / steps
    )


def samples_per_ray(pipeline: VanillaPipeline) -> int:
    """Samples per object and ray where the fields are fully evaluated (the coarse density pass not counted)."""
    model = pipeline.model
    enter_phase(model, "alternation")
    ray_bundle, _ = pipeline.datamanager.next_train(0)
    with torch.no_grad():
        return int(model.sample_objects(ray_bundle[:8], model.scales_per_ray(8, "cpu"))[0].density.shape[-1])


def main(args: BenchmarkArgs) -> None:
    # nerfstudio's ray generation indexes with lists, which torch warns about on every batch
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    print(machine_info())
    for num_objects in args.num_objects:
        torch.manual_seed(args.seed)
        with tempfile.TemporaryDirectory() as temporary:
            cache_dir = args.cache_dir or Path(os.environ.get("OSN_CACHE_DIR", temporary))
            scene = ensure_demo_scene(DemoSceneConfig(num_objects=num_objects), cache_dir=cache_dir)
            pipeline, optimizers = build_pipeline(scene, args.fused_adam)
        report(pipeline, optimizers, args)


def report(pipeline: VanillaPipeline, optimizers: Optimizers, args: BenchmarkArgs) -> None:
    """Time both phases on ``pipeline`` and print a table."""
    model = pipeline.model
    datamanager_config = pipeline.datamanager.config
    rays = datamanager_config.train_num_rays_per_batch + datamanager_config.num_keypoint_rays

    for phase in PHASES:
        time_block(pipeline, optimizers, phase, args.warmup)
    blocks: Dict[Phase, List[BlockTimes]] = {phase: [] for phase in PHASES}
    for _ in range(max(1, args.steps // args.block)):
        for phase in PHASES:
            blocks[phase].append(time_block(pipeline, optimizers, phase, args.block))

    print(
        f"\nload average {load_average()} | {model.num_objects} objects (K, background included) | "
        f"{rays} rays per step | "
        f"Adam {'fused' if args.fused_adam else 'default (for-loop)'} | "
        f"malloc {'keeps freed memory' if args.keep_freed_memory else 'default'}"
    )
    print(
        f"samples per ray and object: {model.config.num_coarse_samples} coarse (density only, no gradient) + "
        f"{samples_per_ray(pipeline)} evaluated"
    )
    columns = ("median ms/step", "best ms/step", "rays/s", "faults/step", "sys ms/step")
    print(f"{'phase':<12} " + " ".join(f"{column:>15}" for column in columns))
    for phase in PHASES:
        median = statistics.median(block.seconds for block in blocks[phase])
        best = min(block.seconds for block in blocks[phase])
        faults = statistics.median(block.page_faults for block in blocks[phase])
        system = statistics.median(block.system_seconds for block in blocks[phase])
        values = (1e3 * median, 1e3 * best, rays / median, faults, 1e3 * system)
        print(f"{phase:<12} " + " ".join(f"{value:>15.1f}" for value in values))
    # ru_maxrss is in KiB on Linux; it is the process's peak so far
    print(f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main(tyro.cli(BenchmarkArgs))
