"""Train on a processed scene and on the true poses with the same preset, and compare their novel views.

    python benchmarks/process_end_to_end.py [--scenes test-scene demo] [--preset configs/demo-cpu.yaml]
        [--draws 5] [--work DIR] [--threads 1] [--silhouettes]

For each scene (a demo scene, or an indoor benchmark scene, as ``benchmarks/process_data.py`` names them):
``osn-process-data`` on the truth's frames and masks alone (true focal length, default settings: untrusted objects
are left out, their pixels unknown; with ``--silhouettes``, objects SfM cannot register are kept, placed from their
silhouettes); the truth's test views, relative scales and amodal depth carried into the
processed scene's frame and units (``process/evaluation.transfer_evaluation``); ``osn-train PRESET`` on both
scenes, the two runs side by side with ``--threads`` torch threads each; then the test cameras at the true
configuration and at the closest of 100 configurations sampled by each run's scale network (median over ``--draws``
groups of 100), as ``benchmarks/quality.py`` renders them. The process-data issue's bar: the processed run's
closest-of-100 PSNR within 1.5 dB of the true poses' run.

The runs stay in ``--work`` (a new temporary directory by default) for ``quality.py`` and the viewer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import numpy as np
from process_data import truth_scene, user_settings

from machine import load_average, machine_info
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.evaluation import transfer_evaluation
from osn_nerfstudio.process.pipeline import process_video
from quality import closest_in_groups, evaluate_at, load_run

REPO = Path(__file__).resolve().parent.parent


def processed_scene(name: str, work: Path, silhouettes: bool = False):
    """(truth, processed scene with the truth's evaluation, process report) for scene ``name``; ``silhouettes``
    registers objects SfM cannot from their silhouettes (``--silhouettes.enabled``)."""
    truth, frame_rate = truth_scene(name, work)
    settings = user_settings(truth, frame_rate, work, work / "processed")
    settings = replace(settings, preview=False, silhouettes=replace(settings.silhouettes, enabled=silhouettes))
    report = process_video(settings)
    return truth, transfer_evaluation(load_scene(work / "processed"), truth), report


def train_both(scenes: Dict[str, Path], preset: Path, work: Path, threads: int) -> Dict[str, Path]:
    """Run directory of ``osn-train preset`` on each scene, the runs side by side."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs = {}
    for label, scene in scenes.items():
        output = work / "outputs" / label.replace(" ", "-")
        log = (work / f"train-{label.replace(' ', '-')}.log").open("w")
        command = [str(Path(sys.executable).parent / "osn-train"), str(preset), "--data", str(scene),
                   "--output-dir", str(output)]
        runs[label] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment), output)
    directories = {}
    for label, (process, output) in runs.items():
        if process.wait() != 0:
            raise SystemExit(f"osn-train failed on the {label} scene; its log: {work}")
        directories[label] = max(output.glob("*/osn/*"), key=lambda p: p.stat().st_mtime)
    return directories


def scores(run: Path, draws: int) -> Dict[str, float]:
    """Test-view PSNR and mIoU at the truth, and PSNR at the closest of 100 sampled configurations (median)."""
    import torch

    pipeline, _, _ = load_run(run)
    model = pipeline.model
    truth = model.true_scales.cpu()
    at_truth = evaluate_at(pipeline, truth)
    sampled = model.scale_network.sample(100 * draws, generator=torch.Generator().manual_seed(0))
    closest = [evaluate_at(pipeline, scales)["psnr"] for _, scales in closest_in_groups(sampled.scales.cpu(), truth)]
    return {"truth": at_truth["psnr"], "miou": at_truth.get("miou", float("nan")), "closest": float(np.median(closest))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["test-scene", "demo"])
    parser.add_argument("--preset", type=Path, default=REPO / "configs" / "demo-cpu.yaml")
    parser.add_argument("--draws", type=int, default=5, help="groups of 100 sampled configurations")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training run")
    parser.add_argument("--silhouettes", action="store_true", help="process with --silhouettes.enabled")
    args = parser.parse_args()
    work_root = args.work or Path(tempfile.mkdtemp(prefix="osn-end-to-end-"))
    print(f"# Processed scene against true poses, end to end ({args.preset.name})\n")
    print(f"Machine: {machine_info()}; load average {load_average()}; runs in {work_root}\n")
    rows: List[str] = []
    for name in args.scenes:
        work = work_root / name
        work.mkdir(parents=True)
        truth, processed, report = processed_scene(name, work, args.silhouettes)
        kept = [o.name for o in processed.objects]
        left_out = [o.name for o in truth.objects if o.name not in kept]
        start = time.perf_counter()
        runs = train_both({"true poses": truth.root, "processed": processed.root}, args.preset, work, args.threads)
        minutes = (time.perf_counter() - start) / 60
        measured = {label: scores(run, args.draws) for label, run in runs.items()}
        for label, m in measured.items():
            objects = f"{len(kept)} of {truth.num_objects}" if label == "processed" else f"{truth.num_objects}"
            rows.append(f"| {name} | {label} | {objects} | {m['truth']:.2f} | {m['closest']:.2f} | {m['miou']:.3f} |")
        gap = measured["true poses"]["closest"] - measured["processed"]["closest"]
        print(f"{name}: processed in {sum(report.stage_seconds.values()):.0f} s, left out: {left_out or 'none'}; "
              f"both runs trained in {minutes:.1f} min; closest-of-100 PSNR {gap:+.2f} dB behind the true poses' "
              f"run (bar: 1.5)")
    print("\n| scene | poses | objects | PSNR at the truth | closest of 100, median | mIoU at the truth |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
