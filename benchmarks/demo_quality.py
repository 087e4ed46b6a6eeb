"""Check a trained demo-scene run against the method's quality bars; print a markdown report.

    python benchmarks/demo_quality.py RUN_DIR [--samples 1000] [--draws 5] [--common-scale-factors 1.03 1.06 1.1]

RUN_DIR is outputs/<experiment>/osn/<timestamp>. The scene must be a demo scene (its provenance gives the
generator settings, from which the true occlusions and every object's true depth are recomputed).

Besides the run's own numbers, the report scores the same candidates against the scene's *exact* valid
set: validity computed from the generator's true per-object depth on every pixel of the video. That set
is what a perfect method would learn; the closest-of-100 distance it leaves says how far the bar on
"the configuration closest to the truth among 100 sampled valid ones" depends on the scene itself. The
test cameras are rendered at the closest of 100 configurations both sampled by the scale network and drawn from
the exact valid set, and at the truth with every foreground object scaled by a common factor: what a given
distance from the truth costs on this scene, whatever the method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio.core.validity import SupervisionCache, plan_validity, score_plan, validity
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, build_demo_world, occlusion_counts, render_view
from osn_nerfstudio.data.validation import load_scene

MIN_OCCLUSION_PIXELS = 20
"""Pixels of overlap (summed over the video) for a pair to count as occluding each other."""


def occluding_pairs(scene) -> list[tuple[int, int]]:
    """(i, j): object i hides part of object j somewhere in the video (from the generator's ground truth)."""
    config = DemoSceneConfig(**scene.provenance["settings"])
    counts = occlusion_counts(build_demo_world(config), scene.times)
    return [(i, j) for i in range(1, len(counts)) for j in range(1, len(counts)) if counts[i, j] >= MIN_OCCLUSION_PIXELS]


def exact_cache(scene) -> SupervisionCache:
    """Every pixel of the video with each object's true own-unit depth (alone) and the visible object's label."""
    config = DemoSceneConfig(**scene.provenance["settings"])
    world = build_demo_world(config)
    units = torch.tensor(world.relative_scales, dtype=torch.float64)
    depths, labels = [], []
    for time in scene.times:
        camera_to_world = world.camera_to_world(time)
        visible = render_view(world, camera_to_world, time, shade=False).labels.reshape(-1)
        alone = [render_view(world, camera_to_world, time, objects=[k], shade=False).depth.reshape(-1) for k in range(world.num_objects)]
        depths.append(np.stack(alone, axis=1)[visible >= 0])
        labels.append(visible[visible >= 0])
    depth = torch.tensor(np.concatenate(depths))
    hit = torch.isfinite(depth)
    return SupervisionCache(
        depth=torch.where(hit, depth, torch.ones_like(depth)) / units,
        acc=hit.double(),
        label=torch.tensor(np.concatenate(labels)),
        weight=torch.ones(len(depth), dtype=torch.float64),
    )


def closest_in_groups(scales: torch.Tensor, truth: torch.Tensor, group: int = 100) -> list[tuple[float, torch.Tensor]]:
    """(largest log-scale gap to the truth, configuration) of the closest configuration in each consecutive group."""
    gap = (scales.log() - truth.log()).abs().amax(-1)
    closest = []
    for start in range(0, len(gap) - group + 1, group):
        index = start + int(gap[start : start + group].argmin())
        closest.append((float(gap[index]), scales[index]))
    return closest


def reversed_configuration(cache, truth: torch.Tensor, i: int, j: int) -> torch.Tensor | None:
    """The true configuration with occluder i pushed behind j on every ray where i hides j."""
    both = (cache.label == i) & (cache.acc[:, i] > 0.5) & (cache.acc[:, j] > 0.5)
    if not both.any():
        return None
    needed = (truth[j] * cache.depth[both, j] / (truth[i] * cache.depth[both, i])).max()
    config = truth.clone()
    config[i] = truth[i] * needed * 1.2
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=5, help="draws of 100 configurations evaluated on the test cameras")
    parser.add_argument(
        "--common-scale-factors", type=float, nargs="*", default=[1.03, 1.06, 1.1],
        help="factors applied to every foreground object's true scale, each evaluated on the test cameras",
    )
    args = parser.parse_args()
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(args.run / "config.yml", test_mode="test")
    model = pipeline.model
    model.eval()
    scene = load_scene(pipeline.datamanager.dataparser.config.data, check_files=False)
    names = model.object_names
    truth = model.true_scales.cpu()
    threshold = model.config.validity_threshold

    generator = torch.Generator().manual_seed(0)
    cache = model.supervision_cache_of(pipeline.datamanager, generator)
    torch.manual_seed(0)
    sampled = model.scale_network.sample(args.samples)
    scales = sampled.scales.cpu()
    exact = validity(cache, torch.cat([truth[None], scales]), model.config.min_accumulation)
    truth_exact, sample_exact = float(exact[0]), exact[1:]
    truth_osn = float(model.scale_network.probability(truth[None].to(model.true_scales.device))[0])

    print(f"# Demo quality: {args.run} (step {step})\n")
    print(f"* true configuration: scale network score {truth_osn:.3f}, exact validity {truth_exact:.3f} "
          f"(best sampled {float(sample_exact.max()):.3f}; threshold {threshold})")
    print(f"* {args.samples} sampled configurations: fell back = {sampled.fell_back}; "
          f"exact validity median {float(sample_exact.median()):.3f}")

    print("\n| occluder | occluded | true ratio | sampled ratio interval | contains truth | reversal: OSN score | reversal: exact validity |")
    print("|---|---|---|---|---|---|---|")
    for i, j in occluding_pairs(scene):
        ratios = scales[:, i] / scales[:, j]
        true_ratio = float(truth[i] / truth[j])
        lo, hi = float(ratios.min()), float(ratios.max())
        reverse = reversed_configuration(cache, truth, i, j)
        if reverse is None:
            osn_rev, exact_rev = "n/a", "n/a"
        else:
            osn_rev = f"{float(model.scale_network.probability(reverse[None].to(model.true_scales.device))[0]):.3f}"
            exact_rev = f"{float(validity(cache, reverse[None], model.config.min_accumulation)[0]):.3f}"
        print(f"| {names[i]} | {names[j]} | {true_ratio:.3f} | {lo:.3f}..{hi:.3f} | {lo <= true_ratio <= hi} | {osn_rev} | {exact_rev} |")

    # the exact valid set of the scene (true depth, every pixel) against what the scale network samples
    exact_plan = plan_validity(exact_cache(scene), 0.5)
    candidates = model.scale_network.ranges.denormalise(torch.rand(200_000, len(names) - 1, generator=generator)).double()
    exact_valid = candidates[score_plan(exact_plan, candidates) >= 1.0 - 1e-9].float()
    learned_closest, exact_closest = closest_in_groups(scales, truth), closest_in_groups(exact_valid, truth)
    learned_gaps, exact_gaps = [gap for gap, _ in learned_closest], [gap for gap, _ in exact_closest]
    print("\n| object | true scale | sampled by the scale network | exact valid set (true depth, all pixels) |\n|---|---|---|---|")
    for k, name in enumerate(names[1:], start=1):
        print(f"| {name} | {float(truth[k]):.3f} | {float(scales[:, k].min()):.3f}..{float(scales[:, k].max()):.3f} | "
              f"{float(exact_valid[:, k].min()):.3f}..{float(exact_valid[:, k].max()):.3f} |")
    print(f"\nexact valid set: {len(exact_valid) / len(candidates):.3%} of the scale-range box; sampled configurations exactly "
          f"valid on true depth: {float((score_plan(exact_plan, scales.double()) >= 1.0 - 1e-9).float().mean()):.3f}")
    print(f"closest-of-100 largest log-scale gap to the truth, median (min..max) over groups of 100: sampled "
          f"{np.median(learned_gaps):.3f} ({min(learned_gaps):.3f}..{max(learned_gaps):.3f}); exact valid set "
          f"{np.median(exact_gaps):.3f} ({min(exact_gaps):.3f}..{max(exact_gaps):.3f})")

    # test cameras at the configuration closest to the truth among 100 sampled, for several draws of 100, from
    # the scale network and (what a perfect method would sample) from the exact valid set
    model.config.eval_num_configurations = 0  # only the chosen configuration (and the truth) per evaluation
    learned_rows = [(gap, evaluate_at(pipeline, step, closest)) for gap, closest in learned_closest[: args.draws]]
    exact_rows = [(gap, evaluate_at(pipeline, step, closest)) for gap, closest in exact_closest[: args.draws]]
    keys = [k for k in ("psnr", "ssim", "depth_abs_rel", "depth_rmse", "miou") if k in learned_rows[0][1]]
    for title, rows in (("sampled by the scale network", learned_rows), ("drawn from the exact valid set", exact_rows)):
        print(f"\nTest cameras at the configuration closest to the truth among 100 {title}, {len(rows)} draws:\n")
        print("| draw | log gap | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
        for draw, (gap, metrics) in enumerate(rows):
            print(f"| {draw} | {gap:.3f} | " + " | ".join(f"{metrics[k]:.4f}" for k in keys) + " |")
        print("| median | | " + " | ".join(f"{np.median([m[k] for _, m in rows]):.4f}" for k in keys) + " |")
        if "gt/psnr" in rows[0][1]:
            print("| truth | 0 | " + " | ".join(f"{rows[0][1]['gt/' + k]:.4f}" for k in keys) + " |")
    if args.common_scale_factors:
        print("\nTest cameras at the truth with every foreground object's scale multiplied by a common factor:\n")
        print("| factor | log gap | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
        for factor in args.common_scale_factors:
            scaled = truth.clone()
            scaled[1:] *= factor
            metrics = evaluate_at(pipeline, step, scaled)
            print(f"| {factor:g} | {abs(np.log(factor)):.3f} | " + " | ".join(f"{metrics[k]:.4f}" for k in keys) + " |")
    print(f"\nscale ranges: { {n: [round(v, 3) for v in model.scale_range[k].tolist()] for k, n in enumerate(names)} }")


def evaluate_at(pipeline, step: int, scales: torch.Tensor) -> dict:
    """ns-eval's metrics of the test cameras at ``scales`` (and at the truth, as ``gt/...``), its console output kept quiet."""
    pipeline.model.render_scales.copy_(scales.to(pipeline.model.render_scales.device))
    with CONSOLE.capture():
        return pipeline.get_average_eval_image_metrics(step=step)


if __name__ == "__main__":
    main()
