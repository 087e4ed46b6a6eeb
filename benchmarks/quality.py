"""Check a trained run against the method's quality bars; print a markdown report.

    python benchmarks/quality.py RUN_DIR [--samples 1000] [--draws 5] [--exact-draws N]
        [--common-scale-factors 1.03 1.06 1.1] [--refit [KEY=VALUE ...]] [--no-render]

RUN_DIR is outputs/<experiment>/osn/<timestamp>. The scene must be a generated one: the demo scene or an indoor
benchmark scene (``benchmarks/indoor_scenes.py``), whose ``evaluation.amodal_depth`` gives every object's true
depth at every pixel of the video.

Besides the run's own numbers, the report compares the learned set with the scene's *exact* valid set: the
configurations under which the true per-object depths explain every pixel of the video (``data/ground_truth.py``).
That set is what a perfect method would learn. The test cameras are rendered at the truth, at the closest of 100
configurations sampled by the scale network and drawn from the exact valid set, and at the truth with every
foreground object scaled by a common factor: what a given distance from the truth costs on this scene.

``--refit`` first refits the scale network on the run's fields with this checkout's validity labelling (and the
given settings of the model's config, e.g. ``validity.depth_margin=0.5``), as the run's last refit would have: it
measures a labelling change without training again. ``--no-render`` reports the valid sets only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from machine import load_average, machine_info
from osn_nerfstudio.core.scale_ranges import closest_configuration
from osn_nerfstudio.core.validity import validity
from osn_nerfstudio.data.ground_truth import exact_valid_set, occlusion_counts
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.validity_labels import label_validity

MIN_OCCLUSION_PIXELS = 20
"""Pixels of overlap (summed over the video) for a pair to count as occluding each other."""
METRICS = ("psnr", "ssim", "depth_abs_rel", "depth_mad_mae", "miou")


def closest_in_groups(scales: torch.Tensor, truth: torch.Tensor, group: int = 100) -> list[tuple[float, torch.Tensor]]:
    """(largest log-scale gap to the truth, configuration) of the closest configuration in each consecutive group."""
    closest = []
    for start in range(0, len(scales) - group + 1, group):
        index, gap = closest_configuration(scales[start : start + group], truth)
        closest.append((gap, scales[start + index]))
    return closest


def reversed_configuration(cache, truth: torch.Tensor, i: int, j: int) -> torch.Tensor | None:
    """The true configuration with occluder i pushed behind j on every cached ray where i hides j."""
    both = (cache.label == i) & (cache.acc[:, i] > 0.5) & (cache.acc[:, j] > 0.5)
    if not both.any():
        return None
    needed = (truth[j] * cache.depth[both, j] / (truth[i] * cache.depth[both, i])).max()
    config = truth.clone()
    config[i] = truth[i] * needed * 1.2
    return config


def refit(model, datamanager, step: int, settings: list[str]) -> None:
    """Refit the scale network on the run's fields with ``settings`` applied to the model's config: ``PATH=VALUE``, the
    path relative to it (``validity.depth_margin=0.5``, ``scale_network.proposal_margin=0``)."""
    for setting in settings:
        path, _, value = setting.partition("=")
        *parents, key = path.split(".")
        owner = model.config
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, key, type(getattr(owner, key))(value))
        print(f"refit with {path} = {getattr(owner, key)}")
    model.fit_scale_network(datamanager, step)


def load_run(run: Path):
    """(pipeline, step, scene) of a trained run, its model in eval mode; the scene read from the run's data."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(run / "config.yml", test_mode="test")
    pipeline.model.eval()
    return pipeline, step, load_scene(pipeline.datamanager.dataparser.config.data, check_files=False)


@torch.no_grad()
def evaluate_at(pipeline, scales: torch.Tensor) -> dict:
    """ns-eval's metrics of the test cameras (their mean over the views) at the configuration ``scales``."""
    from osn_nerfstudio.osn_pipeline import average_over

    model = pipeline.model
    with model.evaluating(), model.at_configuration(scales):
        return average_over(pipeline.evaluate_images(None, None), get_std=False)


def metric_table(rows: list[tuple[float, dict]], keys: list[str], truth: dict | None) -> str:
    lines = ["| draw | log gap | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {i} | {gap:.3f} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |"
              for i, (gap, m) in enumerate(rows)]
    lines.append("| median | | " + " | ".join(f"{np.median([m[k] for _, m in rows]):.4f}" for k in keys) + " |")
    if truth is not None:
        lines.append("| truth | 0 | " + " | ".join(f"{truth[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=5,
                        help="draws of 100 configurations evaluated on the test cameras")
    parser.add_argument("--exact-draws", type=int, default=None,
                        help="of those drawn from the exact valid set (default: --draws)")
    parser.add_argument("--refit", nargs="*", default=None, metavar="KEY=VALUE",
                        help="refit the scale network first, with these settings of the model's config")
    parser.add_argument("--no-render", action="store_true", help="skip the test cameras")
    parser.add_argument(
        "--common-scale-factors", type=float, nargs="*", default=[1.03, 1.06, 1.1],
        help="factors applied to every foreground object's true scale, each evaluated on the test cameras",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    pipeline, step, scene = load_run(args.run)
    model = pipeline.model
    names, device = model.object_names, model.true_scales.device
    truth = model.true_scales.cpu()
    generator = torch.Generator().manual_seed(0)
    if args.refit is not None:
        refit(model, pipeline.datamanager, step, args.refit)

    labels = label_validity(model, pipeline.datamanager, generator)
    cache, labelled = labels.cache, labels.labelled
    sampled = model.scale_network.sample(args.samples, generator=generator)
    scales = sampled.scales.cpu()
    exact = exact_valid_set(scene, model.scale_range.cpu())
    exact_draws = exact.sample(args.samples, generator).float()
    score = lambda s: model.scale_network.probability(s.to(device)).cpu()  # noqa: E731
    uniform = model.scale_network.ranges.denormalise(torch.rand(200_000, len(names) - 1, generator=generator))

    print(f"# Quality: {args.run} (step {step})\n")
    print(f"Machine: {machine_info()}; load average {load_average()}\n")
    print(f"* true configuration {[round(float(s), 4) for s in truth]}: "
          f"scale network score {float(score(truth[None])[0]):.3f}; "
          f"valid by the labelling rule: {bool(labelled.valid.contains(truth[None])[0])} (margin "
          f"{float(labelled.valid.margins(truth[None])[0]):+.4f}); "
          f"exactly valid: {bool(exact.contains(truth[None])[0])}; "
          f"explains {float(validity(cache, truth[None], model.config.validity.min_accumulation)[0]):.4f} "
          "of the supervision rays")
    print(f"* labelling: {labelled.constraint_weight:.0f} constraints, {labelled.tolerated_weight:.0f} tolerated, "
          f"{labelled.contradicted_weight:.0f} set aside as contradicted")
    print(f"* {args.samples} sampled configurations (fell back: {sampled.fell_back}): "
          f"{float(exact.contains(scales).float().mean()):.3f} exactly valid, "
          f"{float(labelled.valid.contains(scales).float().mean()):.3f} valid by the labelling rule")
    print(f"* {args.samples} configurations drawn from the exact valid set: "
          f"{float((score(exact_draws) > 0.5).float().mean()):.3f} scored valid by the scale network")
    print(f"* exact valid set: {float(exact.contains(uniform).float().mean()):.3%} of the scale-range box; "
          f"labelled set: {float(labelled.valid.contains(uniform).float().mean()):.3%}; scale network > 0.5: "
          f"{float((score(uniform) > 0.5).float().mean()):.3%}")

    counts = occlusion_counts(scene)
    pairs = [(i, j) for i in range(len(names)) for j in range(1, len(names))
             if i != j and counts[i, j] >= MIN_OCCLUSION_PIXELS]
    print("\n| occluder | occluded | pixels | true ratio | sampled ratio interval | exact interval | reversal: OSN "
          "| reversal: labelled valid |")
    print("|---|---|---|---|---|---|---|---|")
    for i, j in pairs:
        ratios = scales[:, i] / scales[:, j]
        true_ratio = float(truth[i] / truth[j])
        low, high = exact.scale_interval(i, j)
        reverse = reversed_configuration(cache, truth, i, j)
        osn_rev = "n/a" if reverse is None else f"{float(score(reverse[None])[0]):.3f}"
        rule_rev = "n/a" if reverse is None else str(bool(labelled.valid.contains(reverse[None])[0]))
        print(f"| {names[i]} | {names[j]} | {counts[i, j]} | {true_ratio:.3f} "
              f"| {float(ratios.min()):.3f}..{float(ratios.max()):.3f} "
              f"| {low:.3f}..{high:.3f} | {osn_rev} | {rule_rev} |")
    print("\n| object | true scale | scale range | sampled by the scale network | exact valid set |"
          "\n|---|---|---|---|---|")
    exact_low, exact_high = (bound.exp() for bound in exact.log_box())
    for k, name in enumerate(names[1:], start=1):
        low, high = model.scale_range[k].tolist()
        print(f"| {name} | {float(truth[k]):.3f} | {low:.3f}..{high:.3f} "
              f"| {float(scales[:, k].min()):.3f}..{float(scales[:, k].max()):.3f} "
              f"| {float(exact_low[k]):.3f}..{float(exact_high[k]):.3f} |")

    learned_closest, exact_closest = closest_in_groups(scales, truth), closest_in_groups(exact_draws, truth)
    learned_gaps, exact_gaps = [gap for gap, _ in learned_closest], [gap for gap, _ in exact_closest]
    print(f"\nclosest of 100 (largest log-scale gap to the truth), median (min..max) over groups of 100: sampled "
          f"{np.median(learned_gaps):.3f} ({min(learned_gaps):.3f}..{max(learned_gaps):.3f}); exact valid set "
          f"{np.median(exact_gaps):.3f} ({min(exact_gaps):.3f}..{max(exact_gaps):.3f})")

    if args.no_render:
        print(f"\nreport took {time.perf_counter() - start:.0f} s")
        return
    rendering = time.perf_counter()
    at_truth = evaluate_at(pipeline, truth)
    learned_rows = [(gap, evaluate_at(pipeline, closest)) for gap, closest in learned_closest[: args.draws]]
    exact_draws_evaluated = args.draws if args.exact_draws is None else args.exact_draws
    exact_rows = [(gap, evaluate_at(pipeline, closest)) for gap, closest in exact_closest[:exact_draws_evaluated]]
    keys = [k for k in METRICS if k in at_truth]
    for title, rows in (("sampled by the scale network", learned_rows), ("drawn from the exact valid set", exact_rows)):
        if not rows:
            continue
        print(f"\nTest cameras at the configuration closest to the truth among 100 {title}, {len(rows)} draws:\n")
        print(metric_table(rows, keys, at_truth))
    if args.common_scale_factors:
        print("\nTest cameras at the truth with every foreground object's scale multiplied by a common factor:\n")
        rows = []
        for factor in args.common_scale_factors:
            scaled = truth.clone()
            scaled[1:] *= factor
            rows.append((abs(float(np.log(factor))), evaluate_at(pipeline, scaled)))
        print(metric_table(rows, keys, None).replace("| draw |", "| factor index |"))
    evaluated = 1 + len(learned_rows) + len(exact_rows) + len(args.common_scale_factors or [])
    print(f"\nreport took {time.perf_counter() - start:.0f} s; the test cameras at one configuration "
          f"{(time.perf_counter() - rendering) / evaluated:.0f} s (render and metrics, mean of {evaluated})")


if __name__ == "__main__":
    main()
