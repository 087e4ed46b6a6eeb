"""Train variants of a preset on one scene and compare them at the true configuration; print a markdown table.

    python benchmarks/ablations.py --scene SCENE [--preset configs/demo-cpu.yaml] [--steps 2400] [--threads 2]
        --variant NAME="ARGS" [--variant NAME="ARGS" ...]

Each variant is a name and extra ``ns-train`` arguments (``base=""`` for the preset as it is), trained from scratch
in turn (experiment ``ablation-<name>`` under ``--output-dir``) and then scored at the scene's true configuration,
so that the figures measure the fields and the sampling rather than how close a sampled configuration lands:
training frames (every 8th, the fit) and the test cameras (novel views, co-visible pixels where the scene has
masks). ``--scene demo`` trains on the default demo scene. Compare times only within one invocation.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from machine import load_average, machine_info
from quality import evaluate_at, load_run

REPO = Path(__file__).resolve().parents[1]
KEYS = ("psnr", "ssim", "depth_abs_rel", "depth_mad_mae", "miou")


def train(name: str, extra: list[str], args) -> tuple[Path, float]:
    """Train one variant; returns its run directory and wall-clock seconds."""
    experiment = f"ablation-{name}"
    command = [
        str(Path(sys.executable).parent / "osn-train"), str(args.preset), "--output-dir", str(args.output_dir),
        "--experiment-name", experiment, "--max-num-iterations", str(args.steps), "--steps-per-save", str(args.steps),
        *extra,
    ]
    if args.scene != "demo":
        command += ["--data", str(args.scene)]
    start = time.perf_counter()
    log = args.output_dir / f"{experiment}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return max((args.output_dir / experiment / "osn").iterdir()), time.perf_counter() - start


@torch.no_grad()
def training_view_psnr(pipeline, every: int = 8) -> float:
    """Mean PSNR of every ``every``-th training frame rendered at the true configuration (all pixels)."""
    from osn_nerfstudio.core.metrics import psnr

    model, dataset = pipeline.model, pipeline.datamanager.train_dataset
    scores = []
    with model.at_configuration(model.true_scales):
        for frame in range(0, len(dataset), every):
            outputs = model.get_outputs_for_camera(dataset.cameras[frame : frame + 1])
            scores.append(psnr(outputs["rgb"].clamp(0, 1), dataset[frame]["image"][..., :3].to(outputs["rgb"].device)))
    return float(sum(scores) / len(scores))


def score(run: Path) -> dict:
    pipeline, _, _ = load_run(run)
    metrics = evaluate_at(pipeline, pipeline.model.true_scales)
    return {"train_psnr": training_view_psnr(pipeline), **{key: metrics[key] for key in KEYS if key in metrics}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="demo", help="scene directory, or 'demo'")
    parser.add_argument("--preset", type=Path, default=REPO / "configs" / "demo-cpu.yaml")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/ablations"))
    parser.add_argument("--variant", action="append", required=True, help='NAME="extra ns-train arguments"')
    args = parser.parse_args()
    print(f"Machine: {machine_info()}; scene {args.scene}; preset {args.preset.name}; {args.steps} steps; "
          f"{args.threads} threads\n")
    rows = []
    for entry in args.variant:
        name, _, extra = entry.partition("=")
        load = load_average()
        run, seconds = train(name, shlex.split(extra), args)
        metrics = score(run)
        rows.append((name, extra, seconds, metrics))
        print(f"{name}: {seconds / 60:.1f} min (load before {load}); "
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    keys = list(rows[0][3])
    print("\n| variant | arguments | training | " + " | ".join(keys) + " |\n|---|---|---|" + "---|" * len(keys))
    for name, extra, seconds, metrics in rows:
        print(f"| {name} | `{extra}` | {seconds / 60:.1f} min | "
              + " | ".join(f"{metrics[k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
