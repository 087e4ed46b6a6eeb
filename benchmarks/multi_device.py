"""Training throughput on one process against several (torch.distributed), same preset and scene; a markdown table.

    python benchmarks/multi_device.py [--scene demo] [--preset configs/demo-cpu.yaml] [--steps 400] [--devices 1 2]
        [--device-type cpu] [--threads 2]

Each process trains on its own batch of ``train_num_rays_per_batch`` pixel rays plus the keypoint rays, so N
processes take N times the rays per step. Every setting is trained twice, for ``--steps`` steps and for one step, and
the throughput is the rays of the extra steps over the extra time: start-up (imports, data loading, process
start) cancels out. The steps cover the bootstrap and the alternation (bootstrap ``--steps / 2``, a refit every
``--steps / 4``). On a CPU the ``--threads`` cores are split between the processes. Compare ratios within one
invocation only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from machine import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]


def train(args, devices: int, steps: int, output_dir: Path) -> float:
    """Wall-clock seconds of one osn-train run with ``devices`` processes and ``steps`` steps."""
    command = [
        str(Path(sys.executable).parent / "osn-train"), str(args.preset), "--output-dir", str(output_dir),
        "--experiment-name", f"devices-{devices}-steps-{steps}", "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps), "--pipeline.model.bootstrap-steps", str(max(1, args.steps // 2)),
        "--pipeline.model.steps-per-round", str(max(1, args.steps // 4)),
        "--machine.num-devices", str(devices), "--machine.device-type", args.device_type,
    ]
    if args.scene != "demo":
        command += ["--data", str(args.scene)]
    threads = max(1, args.threads // devices) if args.device_type == "cpu" else args.threads
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    log = output_dir / f"devices-{devices}-steps-{steps}.log"
    with log.open("w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - start


def rays_per_step(preset: Path) -> int:
    """Rays one process trains on per step under the preset (nerfstudio's and this plugin's defaults otherwise)."""
    from osn_nerfstudio.console import third_party_imports

    with third_party_imports():
        from osn_nerfstudio.osn_config import osn_method

    datamanager = osn_method.config.pipeline.datamanager
    trainer = yaml.safe_load(preset.read_text()).get("trainer", {})
    pixels = int(trainer.get("--pipeline.datamanager.train-num-rays-per-batch", datamanager.train_num_rays_per_batch))
    keypoints = int(trainer.get("--pipeline.datamanager.num-keypoint-rays", datamanager.num_keypoint_rays))
    return pixels + keypoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="demo", help="a scene directory, or 'demo'")
    parser.add_argument("--preset", type=Path, default=REPO / "configs" / "demo-cpu.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device-type", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (split between the processes)")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="osn-multi-device-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    rays = rays_per_step(args.preset)
    print(f"# Multi-device training throughput: {args.scene}, {args.preset.name}, {args.steps} steps\n")
    print(f"Machine: {machine_info()}; load average before {load_average()}; device type {args.device_type}\n")
    print("| processes | threads each | rays per step (all) | seconds for the steps after the first | rays/s | ratio |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for devices in args.devices:
        one = train(args, devices, 1, output_dir)
        full = train(args, devices, args.steps, output_dir)
        seconds = full - one
        throughput = (args.steps - 1) * rays * devices / seconds
        baseline = baseline or throughput
        threads = max(1, args.threads // devices) if args.device_type == "cpu" else args.threads
        print(f"| {devices} | {threads} | {rays * devices} | {seconds:.1f} | {throughput:.0f} | "
              f"{throughput / baseline:.2f} |", flush=True)
    print(f"\nload average after {load_average()}; logs in {output_dir}")


if __name__ == "__main__":
    main()
