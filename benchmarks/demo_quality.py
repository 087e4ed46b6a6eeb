"""Check a trained demo-scene run against the method's quality bars; print a markdown report.

    python benchmarks/demo_quality.py RUN_DIR [--samples 1000]

RUN_DIR is outputs/<experiment>/osn/<timestamp>. The scene must be a demo scene (its provenance gives the
generator settings, from which the true occlusions are recomputed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from osn_nerfstudio.core.validity import validity
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, build_demo_world, occlusion_counts
from osn_nerfstudio.data.validation import load_scene

MIN_OCCLUSION_PIXELS = 20
"""Pixels of overlap (summed over the video) for a pair to count as occluding each other."""


def occluding_pairs(scene) -> list[tuple[int, int]]:
    """(i, j): object i hides part of object j somewhere in the video (from the generator's ground truth)."""
    config = DemoSceneConfig(**scene.provenance["settings"])
    counts = occlusion_counts(build_demo_world(config), scene.times)
    return [(i, j) for i in range(1, len(counts)) for j in range(1, len(counts)) if counts[i, j] >= MIN_OCCLUSION_PIXELS]


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
    rays, labels, weights = pipeline.datamanager.supervision_rays(model.config.supervision_pixels_per_object, generator)
    cache = model.supervision_cache(rays, labels, weights)
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

    # images at the sampled configuration closest to the truth among 100
    first = scales[:100]
    closest = first[(first.log() - truth.log()).abs().amax(-1).argmin()]
    model.render_scales.copy_(closest.to(model.render_scales.device))
    metrics = pipeline.get_average_eval_image_metrics(step=step)
    print(f"\nTest cameras at the sampled configuration closest to the truth ({[round(float(s), 3) for s in closest]}, "
          f"true {[round(float(s), 3) for s in truth]}):\n")
    print("| metric | value |\n|---|---|")
    for key in ("psnr", "ssim", "depth_abs_rel", "depth_rmse", "miou"):
        if key in metrics:
            print(f"| {key} | {metrics[key]:.4f} |")
    print(f"\nscale ranges: { {n: [round(v, 3) for v in model.scale_range[k].tolist()] for k, n in enumerate(names)} }")


if __name__ == "__main__":
    main()
