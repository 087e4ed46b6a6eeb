"""Time `validity` on random supervision caches: 100k configurations x 10k rays for K = 2, 4, 8.

    python benchmarks/validity_speed.py                 # the table recorded in benchmarks/RESULTS.md
    python benchmarks/validity_speed.py --sweep-chunks  # also time chunk sizes (how the default was chosen)

Two kinds of cache:

* ``dense``: every object covers every ray (accumulation >= 0.5 everywhere), so every ray is contested by all
  K objects: the worst case, all rays go through the chunked comparison.
* ``partial``: the background covers every ray and each foreground object a random 30% of them, as objects
  cover part of the image: most rays have one competitor and cost a binary search per configuration.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import List, Literal, Tuple

import torch
import tyro

from machine import load_average, machine_info
from osn_nerfstudio.core.validity import DEFAULT_CHUNK_ELEMENTS, SupervisionCache, plan_validity, score_plan, validity


@dataclass
class BenchmarkConfig:
    """What to time."""

    configurations: int = 100_000
    """Configurations scored per call."""
    rays: int = 10_000
    """Supervision rays in the cache."""
    objects: Tuple[int, ...] = (2, 4, 8)
    """Numbers of objects K (background included)."""
    caches: Tuple[Literal["dense", "partial"], ...] = ("dense", "partial")
    """Cache kinds (see the module docstring)."""
    threads: Tuple[int, ...] = (1, 0)
    """Intra-op thread counts to time (0: torch's default for this machine). Both are reported because on a
    loaded machine each parallel region waits for a descheduled thread, and one thread can be faster."""
    repeats: int = 3
    """Timed calls per row; the table reports the fastest and the median."""
    table: bool = True
    """Time the table of K x cache kinds."""
    sweep_chunks: bool = False
    """Also time ``score_plan`` for a range of chunk sizes on the dense K=4 cache (at each thread count)."""
    chunk_sizes: List[int] = field(default_factory=lambda: [2**k for k in range(16, 24)])
    """Chunk sizes (configurations x rays) for the sweep."""


def random_cache(
    num_rays: int, num_objects: int, kind: Literal["dense", "partial"], generator: torch.Generator
) -> SupervisionCache:
    acc = 0.5 + 0.5 * torch.rand(num_rays, num_objects, generator=generator)
    if kind == "partial":
        acc[:, 1:] *= torch.rand(num_rays, num_objects - 1, generator=generator) < 0.3
    return SupervisionCache(
        depth=0.5 + 4.5 * torch.rand(num_rays, num_objects, generator=generator),
        acc=acc,
        label=torch.randint(0, num_objects, (num_rays,), generator=generator),
        weight=torch.rand(num_rays, generator=generator),
    )


def random_scales(num_configurations: int, num_objects: int, generator: torch.Generator) -> torch.Tensor:
    scales = torch.exp(4.0 * torch.rand(num_configurations, num_objects, generator=generator) - 2.0)
    scales[:, 0] = 1.0
    return scales


def timed(function, repeats: int) -> Tuple[float, float]:
    """(fastest, median) wall time in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main(config: BenchmarkConfig) -> None:
    print(f"{machine_info()} | load average before the run {load_average()}")
    print(f"validity of {config.configurations} configurations on {config.rays} rays; chunk {DEFAULT_CHUNK_ELEMENTS}")
    default_threads = torch.get_num_threads()
    thread_counts = [count or default_threads for count in config.threads]
    generator = torch.Generator().manual_seed(0)
    if config.table:
        time_table(config, thread_counts, generator)
    if config.sweep_chunks:
        sweep_chunks(config, thread_counts, generator)
    torch.set_num_threads(default_threads)


def time_table(config: BenchmarkConfig, thread_counts: List[int], generator: torch.Generator) -> None:
    """Time ``validity`` (planning included) for each K, cache kind and thread count."""
    work = config.configurations * config.rays
    print()
    print("| K | cache | contested rays (1 / >1 competitors) | threads | fastest s | median s | rays x configs / s |")
    print("|---|---|---|---|---|---|---|")
    for num_objects in config.objects:
        for kind in config.caches:
            cache = random_cache(config.rays, num_objects, kind, generator)
            scales = random_scales(config.configurations, num_objects, generator)
            plan = plan_validity(cache, min_accumulation=0.1)
            single = sum(len(rays.thresholds) for rays in plan.single)
            multi = sum(len(rays.weight) for rays in plan.multi)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                fastest, median = timed(partial(validity, cache, scales, min_accumulation=0.1), config.repeats)
                print(
                    f"| {num_objects} | {kind} | {single} / {multi} | {threads} | {fastest:.2f} | {median:.2f} "
                    f"| {work / fastest:.3g} |"
                )


def sweep_chunks(config: BenchmarkConfig, thread_counts: List[int], generator: torch.Generator) -> None:
    """Time ``score_plan`` on the dense K=4 cache for each chunk size and thread count."""
    cache = random_cache(config.rays, 4, "dense", generator)
    scales = random_scales(config.configurations, 4, generator)
    plan = plan_validity(cache, min_accumulation=0.1)
    print()
    print("chunk sweep: score_plan on the dense K=4 cache")
    print()
    print("| chunk (configs x rays) | threads | fastest s | median s |")
    print("|---|---|---|---|")
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for chunk in config.chunk_sizes:
            fastest, median = timed(partial(score_plan, plan, scales, chunk), config.repeats)
            print(f"| 2^{chunk.bit_length() - 1} | {threads} | {fastest:.2f} | {median:.2f} |")

if __name__ == "__main__":
    main(tyro.cli(BenchmarkConfig))
