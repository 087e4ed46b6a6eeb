"""Where a run's test-view depth is wrong at the true configuration; print a markdown table.

    python benchmarks/depth_errors.py RUN_DIR [--views 0 10 20 30]

``ns-eval``'s depth errors align each image's median depth with the truth's first (docs/metrics.md); in a generated
scene the units are the truth's, so the raw error can be read too. Per test view (co-visible pixels): the median scale
of that alignment, the aligned and the raw abs. rel., then for the background's pixels by quartile of their true depth
the raw relative error (median) and the share more than 10 % short, and how many training frames hold in their view
the surface of those short pixels against the others (occlusion ignored): whether the wrong surfaces were seen; and,
on 64 of the short pixels, how much of the background's own render weight lies more than 10 % in front of the true
surface and how far its heaviest sample is from it: fog in front of a right surface, or a misplaced surface.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from machine import load_average, machine_info
from osn_nerfstudio.core.compositing import render_alone
from quality import load_run


def frames_seeing(scene, view_pose: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """[H, W] training frames whose image holds the surface each pixel of a test view shows (occlusion ignored)."""
    cam = scene.camera
    y, x = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]] + 0.5
    local = np.stack([(x - cam.cx) / cam.fx * depth, -(y - cam.cy) / cam.fy * depth, -depth], -1)
    world = local @ view_pose[:3, :3].T + view_pose[:3, 3]
    count = np.zeros(depth.shape, dtype=int)
    for pose in scene.camera_to_object[0][scene.registered[0]]:
        seen = (world - pose[:3, 3]) @ pose[:3, :3]
        z = -seen[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = cam.fx * seen[..., 0] / z + cam.cx, cam.cy - cam.fy * seen[..., 1] / z
        count += (z > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    return count


@torch.no_grad()
def weight_in_front(model, camera, pixels: np.ndarray, depth: np.ndarray) -> tuple[float, float]:
    """For the background alone on the rays of ``pixels`` ([N, 2] rows, columns) of a test camera: the median share
    of its render weight more than 10 % in front of the true surface, and the median relative error of its heaviest
    sample's distance (is the surface misplaced, or fogged over?)."""
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)[torch.from_numpy(pixels[:, 0]),
                                                                     torch.from_numpy(pixels[:, 1])]
    samples, _ = model.sample_objects(rays, model.scales_per_ray(len(rays), rays.origins.device))
    weight = render_alone(samples).weights[:, 0].cpu().numpy()
    middle = samples.midpoints[:, 0].cpu().numpy()
    # true distance along each ray: the true z-depth over the ray's z component in the camera
    local = rays.directions.cpu().numpy() @ camera.camera_to_worlds[0, :3, :3].cpu().numpy()
    distance = depth[pixels[:, 0], pixels[:, 1]] / np.abs(local[:, 2])
    in_front = (weight * (middle < 0.9 * distance[:, None])).sum(axis=1)
    peak = middle[np.arange(len(middle)), weight.argmax(axis=1)]
    return float(np.median(in_front)), float(np.median(peak / distance - 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--views", type=int, nargs="+", default=[0, 10, 20, 30])
    args = parser.parse_args()
    pipeline, step, scene = load_run(args.run)
    model = pipeline.model
    print(f"# Test-view depth at the truth: {args.run} (step {step})\n")
    print(f"Machine: {machine_info()}; load average {load_average()}\n")
    print("| view | median scale | abs. rel. aligned / raw | background by quartile of true depth: raw error "
          "median, share > 10 % short | training frames seeing short / other pixels | short pixels (64 drawn): "
          "weight > 10 % in front, heaviest sample's error |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad(), model.evaluating(), model.at_configuration(model.true_scales):
        for index, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
            if index not in args.views:
                continue
            batch = pipeline.with_covisibility(batch)
            depth = model.get_outputs_for_camera(camera=camera)["z_depth"][..., 0].cpu().numpy()
            truth = batch["gt_depth"][..., 0].cpu().numpy()
            valid = np.isfinite(truth) & (truth > 0)
            if "covisibility_mask" in batch:
                valid &= batch["covisibility_mask"][..., 0].cpu().numpy() != 0
            scale = float(np.median(truth[valid]) / np.median(depth[valid]))
            raw = (depth - truth) / truth
            aligned = np.abs(scale * depth - truth)[valid] / truth[valid]
            background = valid & (batch["object_id"][..., 0].cpu().numpy() == 0)
            edges = np.percentile(truth[background], [0, 25, 50, 75, 100])
            quartiles = []
            for low, high in zip(edges[:-1], edges[1:]):
                rows = background & (truth >= low) & (truth <= high)
                quartiles.append(f"{np.median(raw[rows]):+.3f}, {np.mean(raw[rows] < -0.1):.2f}")
            seeing = frames_seeing(scene, scene.evaluation.test_views[index].camera_to_background, truth)
            short = background & (raw < -0.1)
            counts = "/".join(f"{np.median(seeing[m]):.0f}" if m.any() else "-" for m in (short, background & ~short))
            drawn = np.argwhere(short)
            drawn = drawn[np.random.default_rng(0).permutation(len(drawn))[:64]]
            fog = "-" if len(drawn) == 0 else "{:.2f}, {:+.3f}".format(*weight_in_front(model, camera, drawn, truth))
            print(f"| {index} | {scale:.3f} | {aligned.mean():.3f} / {np.abs(raw[valid]).mean():.3f} "
                  f"| {'; '.join(quartiles)} | {counts} | {fog} |")


if __name__ == "__main__":
    main()
