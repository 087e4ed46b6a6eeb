"""Where a run's test-view colour error is at the true configuration, object by object; print a markdown table.

    python benchmarks/colour_errors.py RUN_DIR [--every 4]

Test views (every ``--every``-th; co-visible pixels only, as ``ns-eval`` scores them) rendered at the truth; each pixel
goes to the object the scene's test mask shows there. Per object: its share of the pixels, the PSNR of its pixels,
its share of the summed squared error, and the PSNR of all pixels if its error were zero (what fixing it alone
would give). The PSNR here pools the squared error over the views (``ns-eval`` averages per-view PSNRs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from machine import load_average, machine_info
from quality import load_run


def psnr(squared_error: float, count: float) -> float:
    return float(-10.0 * np.log10(squared_error / max(count, 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--every", type=int, default=4, help="score every n-th test view")
    args = parser.parse_args()
    pipeline, step, scene = load_run(args.run)
    model = pipeline.model
    names = [o.name for o in scene.objects]
    error, pixels = np.zeros(len(names)), np.zeros(len(names))
    with torch.no_grad(), model.evaluating(), model.at_configuration(model.true_scales):
        for index, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
            if index % args.every:
                continue
            batch = pipeline.with_covisibility(batch)
            scored = np.ones(batch["image"].shape[:2], dtype=bool)
            if "covisibility_mask" in batch:
                scored &= batch["covisibility_mask"][..., 0].cpu().numpy() != 0
            rgb = model.get_outputs_for_camera(camera=camera)["rgb"].cpu().numpy()
            squared = ((rgb - batch["image"][..., :3].cpu().numpy()) ** 2).mean(-1)
            labels = batch["object_id"][..., 0].cpu().numpy()
            for k in range(len(names)):
                shown = scored & (labels == k)
                error[k] += squared[shown].sum()
                pixels[k] += shown.sum()
    total, count = error.sum(), pixels.sum()
    print(f"# Test-view colour error at the truth by object: {args.run} (step {step})\n")
    print(f"Machine: {machine_info()}; load average {load_average()}\n")
    print(f"Every {args.every}th test view, {int(count)} co-visible pixels; PSNR of all {psnr(total, count):.2f}\n")
    print("| object | pixels | PSNR | share of the error | PSNR of all pixels without its error |")
    print("|---|---|---|---|---|")
    for k, name in enumerate(names):
        print(
            f"| {name} | {pixels[k] / count:.2%} | {psnr(error[k], pixels[k]):.2f} | {error[k] / total:.1%} "
            f"| {psnr(total - error[k], count):.2f} |"
        )


if __name__ == "__main__":
    main()
