"""Train the demo preset with several per-object sample counts and compare time and test-camera quality.

    python benchmarks/sample_counts.py [--counts 8,8 16,16 32,32] [--steps 2400] [--threads 2]

Each entry is "coarse,fine": stratified samples per object and ray inside its box (density only, no gradient),
then samples drawn from their weights by nerfstudio's PDF sampler (the coarse ones are kept and evaluated too).
Every run trains `configs/demo-cpu.yaml` from scratch on the default demo scene (experiment
`samples-<coarse>-<fine>` under `--output-dir`), then scores the test cameras at the true configuration, so
that the numbers measure the fields and not how close a sampled configuration lands. Runs are sequential;
compare their times only within one invocation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from demo_quality import evaluate_at
from machine import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]
KEYS = ("psnr", "ssim", "depth_abs_rel", "miou")


def train(coarse: int, fine: int, steps: int, output_dir: Path, threads: int) -> tuple[Path, float]:
    """Train one run; returns its run directory and wall-clock seconds."""
    name = f"samples-{coarse}-{fine}"
    args = [
        str(Path(sys.executable).parent / "osn-train"), str(REPO / "configs" / "demo-cpu.yaml"),
        "--output-dir", str(output_dir), "--experiment-name", name, "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps),
        "--pipeline.model.num-coarse-samples", str(coarse), "--pipeline.model.num-fine-samples", str(fine),
    ]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - start
    return max((output_dir / name / "osn").iterdir()), seconds


def truth_metrics(run: Path) -> dict:
    """Test-camera metrics at the true configuration of a finished run."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(run / "config.yml", test_mode="test")
    pipeline.model.config.eval_num_configurations = 0
    return evaluate_at(pipeline, step, pipeline.model.true_scales)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", nargs="+", default=["8,8", "16,16", "32,32"])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/sample-counts"))
    args = parser.parse_args()
    print(machine_info())
    rows = []
    for entry in args.counts:
        coarse, fine = (int(x) for x in entry.split(","))
        load = load_average()
        run, seconds = train(coarse, fine, args.steps, args.output_dir, args.threads)
        metrics = truth_metrics(run)
        rows.append((coarse, fine, seconds, metrics))
        print(f"{coarse},{fine}: {seconds:.0f} s (load average before: {load}), " + ", ".join(f"{k} {metrics[k]:.4f}" for k in KEYS), flush=True)
    print(f"\n{args.steps} steps, {args.threads} threads; test cameras at the true configuration:\n")
    print("| coarse | fine | evaluated per object and ray | training wall clock | " + " | ".join(KEYS) + " |")
    print("|---|---|---|---|" + "---|" * len(KEYS))
    for coarse, fine, seconds, metrics in rows:
        print(f"| {coarse} | {fine} | {coarse + fine + 1} | {seconds / 60:.1f} min | " + " | ".join(f"{metrics[k]:.4f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
