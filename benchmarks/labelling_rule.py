"""Sweep the validity labelling rule on a trained run against the scene's exact valid set; print a markdown table.

    python benchmarks/labelling_rule.py RUN_DIR [--label-gaps 1 2] [--min-accumulations 0.5 0.9]
        [--tolerances 0.01 0.03] [--depth-margins 0] [--hidden-pixels 0 2048] [--hidden-gaps 3] [--draws 4000]
        [--true-depths] [--explain]

For every setting the run's fields are rendered on a fresh draw of supervision rays (seed 0; one cache per label
gap and hidden-pixel count, since those choose the rays) and labelled by ``core/validity.valid_set``. Each row says
whether the true configuration is inside the labelled set (and by what log-scale margin), the recall (share of
configurations drawn from the exact valid set that the rule labels valid) and the precision (share of
configurations drawn from the labelled set that are exactly valid). The scene needs ``evaluation.amodal_depth`` (the
demo or an indoor benchmark scene).

``--true-depths`` adds the rule's ceiling: the same label gaps and tolerances applied to the scene's true depths at
every contested pixel the gap keeps (no fields, no sampling of pixels, every object registered in every frame), so
what a perfect field would still lose to the rule itself shows apart from what the fields lose.

``--explain`` adds, for the run's own settings and each depth margin, one row per ordered pair of objects: the
truth's log-scale gap, the exact and labelled bounds on it, and the constraints the truth breaks (how many, by how
much, and their renders' relative depth spread against the others'): which rays cut the truth out, and whether the
depth margin covers them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from machine import load_average, machine_info
from osn_nerfstudio.core.validity import pair_constraints, valid_set
from osn_nerfstudio.data.ground_truth import exact_cache, exact_valid_set
from osn_nerfstudio.data.osn_datamanager import supervision_masks
from osn_nerfstudio.validity_labels import supervision_cache_of
from quality import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--label-gaps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--hidden-pixels", type=int, nargs="+", default=[0, 2048])
    parser.add_argument("--hidden-gaps", type=int, nargs="+", default=[3], help="validity.hidden_gap values")
    parser.add_argument("--min-accumulations", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--depth-margins", type=float, nargs="+", default=[0.0], help="validity.depth_margin values")
    parser.add_argument("--draws", type=int, default=4000, help="configurations drawn from each set")
    parser.add_argument("--true-depths", action="store_true", help="the rule on the true depths of every pixel")
    parser.add_argument("--explain", action="store_true", help="per pair: the constraints that exclude the truth")
    args = parser.parse_args()
    start = time.perf_counter()
    pipeline, step, scene = load_run(args.run)
    model = pipeline.model
    scale_range, truth = model.scale_range.cpu(), model.true_scales.cpu()
    exact = exact_valid_set(scene, scale_range)
    exact_draws = exact.sample(args.draws, torch.Generator().manual_seed(1))
    print(f"# Labelling rule: {args.run} (step {step})\n")
    print(f"Machine: {machine_info()}; load average {load_average()}\n")
    print("| label gap | hidden pixels / pair (gap) | min accumulation | tolerance | depth margin "
          "| truth inside (margin) | recall | precision | constraints | set aside |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = dataclasses.replace(model.config.validity)
    settings = [(gap, hidden, hidden_gap) for gap in args.label_gaps for hidden in args.hidden_pixels
                for hidden_gap in (args.hidden_gaps if hidden > 0 else [0])]
    for gap, hidden, hidden_gap in settings:
        model.config.validity.label_gap, model.config.validity.hidden_pixels_per_pair = gap, hidden
        model.config.validity.hidden_gap = hidden_gap
        cache = supervision_cache_of(model, pipeline.datamanager, torch.Generator().manual_seed(0))
        rules = [(min_acc, tolerance, depth_margin) for min_acc in args.min_accumulations
                 for tolerance in args.tolerances for depth_margin in args.depth_margins]
        for min_acc, tolerance, depth_margin in rules:
            rule = dataclasses.replace(base, min_accumulation=min_acc, tolerance=tolerance, depth_margin=depth_margin)
            labelled = valid_set(cache, scale_range, rule)
            setting = f"| {gap} | {hidden} ({hidden_gap}) | {min_acc} | {tolerance} | {depth_margin} |"
            set_aside = labelled.tolerated_weight + labelled.contradicted_weight
            print(f"{setting} {against_exact(labelled.valid, truth, exact, exact_draws, args.draws)} "
                  f"| {labelled.constraint_weight:.0f} | {set_aside:.0f} |")
    if args.true_depths:
        true_depth_rows(scene, base, scale_range, truth, exact, exact_draws, args)
    if args.explain:
        model.config.validity = base
        cache = supervision_cache_of(model, pipeline.datamanager, torch.Generator().manual_seed(0))
        for depth_margin in args.depth_margins:
            explain(cache, model, exact, dataclasses.replace(base, depth_margin=depth_margin))
    print(f"\nsweep took {time.perf_counter() - start:.0f} s")


def against_exact(labelled, truth, exact, exact_draws, draws: int) -> str:
    """Table cells: the truth inside ``labelled`` (margin), recall of draws from the exact set, precision of draws from
    ``labelled``."""
    if labelled.is_empty():
        return "empty set | |"
    margin = float(labelled.margins(truth[None])[0])
    recall = float(labelled.contains(exact_draws).float().mean())
    precision = float(exact.contains(labelled.sample(draws, torch.Generator().manual_seed(2))).float().mean())
    return f"{margin >= 0} ({margin:+.4f}) | {recall:.3f} | {precision:.3f}"


def true_depth_rows(scene, base, scale_range, truth, exact, exact_draws, args) -> None:
    """The run's rule (``base``) with the sweep's label gaps and tolerances on the true depths of every contested
    pixel the gap keeps (``min_tolerated`` still applies: a tolerance of 0 sets aside that many rays per pair)."""
    print("\nThe rule on the true depths of every contested pixel (every object registered in every frame):\n")
    print("| label gap | tolerance | contested pixels | truth inside (margin) | recall | precision |")
    print("|---|---|---|---|---|---|")
    ids = torch.from_numpy(np.stack([scene.load_mask(v) for v in range(scene.num_frames)]).astype(np.int64))
    registered = torch.ones(scene.num_objects, scene.num_frames, dtype=torch.bool)
    for gap in args.label_gaps:
        kept = torch.stack(supervision_masks(ids, registered, scene.num_objects, gap, 0)[0]).any(0)
        cache = exact_cache(scene, kept.numpy())
        for tolerance in args.tolerances:
            rule = dataclasses.replace(base, tolerance=tolerance)
            labelled = valid_set(cache, scale_range, rule).valid
            print(f"| {gap} | {tolerance} | {len(cache.label)} "
                  f"| {against_exact(labelled, truth, exact, exact_draws, args.draws)} |")


def explain(cache, model, exact, config) -> None:
    """One row per ordered pair: where the truth lies against its labelled and exact bounds, and what cuts it out."""
    names = model.object_names
    truth = model.true_scales.cpu().double().log()
    exact_bounds = exact.closed().bounds
    spread = cache.spread if cache.spread is not None else torch.zeros_like(cache.depth)
    print(f"\nConstraints at the run's settings (depth margin {config.depth_margin}; gaps in log-scale; spreads "
          "relative, label's plus competitor's):\n")
    print("| in front | behind | constraints | truth gap | exact bound | labelled bound | broken by the truth "
          "| shortfall median / max | spread: broken / kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pair in pair_constraints(cache, config.min_accumulation, config.depth_margin):
        pair.tolerate(config.tolerance, config.min_tolerated)
        label, other = pair.label, pair.competitor
        gap = float(truth[label] - truth[other])
        ray_spread = (spread[pair.rays, label] + spread[pair.rays, other]).double()
        broken = pair.thresholds < gap
        shortfall = gap - pair.thresholds[broken]
        short = f"{float(shortfall.median()):.4f} / {float(shortfall.max()):.4f}" if broken.any() else "-"
        spreads = "/".join(f"{float(ray_spread[m].median()):.3f}" if m.any() else "-" for m in (broken, ~broken))
        print(f"| {names[label]} | {names[other]} | {len(broken)} | {gap:+.4f} "
              f"| {float(exact_bounds[label, other]):+.4f} | {pair.bound:+.4f} "
              f"| {int(broken.sum())} ({float(broken.double().mean()):.2%}) | {short} | {spreads} |")


if __name__ == "__main__":
    main()
