"""Time osn-process-data per stage on demo scenes given as frames and masks only, and score the result
against the demo's ground truth (trajectory after similarity alignment, keypoint depth after scaling).

    OMP_NUM_THREADS=1 python benchmarks/process_data.py     # the tables in benchmarks/PROCESS_DATA_RESULTS.md

Scenes: the default demo (128x96, 40 frames, background + 3 objects) and the test suite's scene (128x96,
24 frames, background + box). Intrinsics are given (--focal-length) unless ``--estimate-focal``. Objects
whose registration the pipeline does not trust are kept (``--trust.keep-untrusted``) so that their errors
can be shown, and marked in the "untrusted" column (a default run leaves them out).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import tyro

from machine import load_average, machine_info
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.scene_format import Scene, read_depth
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.evaluation import depth_agreement, trajectory_error
from osn_nerfstudio.process.frames import FrameSamplingConfig
from osn_nerfstudio.process.pipeline import ProcessDataConfig, ProcessReport, process_video
from osn_nerfstudio.process.trust import TrustConfig

SCENES: Dict[str, DemoSceneConfig] = {
    "default demo (128x96, 40 frames, 3 objects)": DemoSceneConfig(),
    "test scene (128x96, 24 frames, 1 object)": DemoSceneConfig(
        seed=0, width=128, height=96, num_frames=24, num_objects=1, supersampling=2, test_view_every=24
    ),
}


@dataclass
class BenchmarkConfig:
    """What to run."""

    repeats: int = 2
    """Runs per scene; the table reports the fastest total and its stages."""
    estimate_focal: bool = False
    """Let the background's SfM estimate the focal length instead of giving the true one."""


def export_inputs(truth: Scene, work: Path) -> Tuple[Path, Path]:
    """The frames and masks of ``truth``, nothing else, as a user would have them."""
    frames, masks = work / "frames", work / "masks"
    frames.mkdir()
    masks.mkdir()
    for v, frame in enumerate(truth.frames):
        (frames / f"{v:05d}.png").write_bytes(truth.path(frame.image).read_bytes())
        (masks / f"{v:05d}.png").write_bytes(truth.path(frame.mask).read_bytes())
    return frames, masks


def accuracy_rows(scene: Scene, truth: Scene, names: List[str], report: ProcessReport) -> List[str]:
    """Markdown rows: per object, registered frames, keypoints and errors against the ground truth."""
    depth = np.stack([read_depth(truth.path(f.depth)) for f in truth.frames])
    labels = np.stack([truth.load_mask(v) for v in range(truth.num_frames)])
    rows = []
    for name in names:
        if name not in [o.name for o in scene.objects]:
            rows.append(f"| {name} | left out | | | | | |")
            continue
        k, truth_k = [o.name for o in scene.objects].index(name), names.index(name)
        registered = scene.registered[k]
        error = trajectory_error(scene.camera_to_object[k][registered], truth.camera_to_object[truth_k][registered])
        kp = scene.keypoints.select(scene.keypoints.object_id == k)
        px = np.floor(kp.uv).astype(int)
        on_object = labels[kp.frame, px[:, 1], px[:, 0]] == truth_k
        agreement = depth_agreement(kp.depth[on_object], depth[kp.frame, px[:, 1], px[:, 0]][on_object])
        rows.append(
            f"| {name} | {registered.sum()}/{scene.num_frames} | {len(kp)} | "
            f"{error.rotation_deg_mean:.2f} / {error.rotation_deg_max:.2f} | "
            f"{100 * error.translation_relative_mean:.1f} / {100 * error.translation_relative_max:.1f} | "
            f"{100 * agreement.relative_error_median:.1f} / {100 * agreement.relative_error_p90:.1f} | "
            f"{'yes' if any(o.name == name and o.untrusted for o in report.objects) else 'no'} |"
        )
    return rows


def run(name: str, demo: DemoSceneConfig, config: BenchmarkConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="osn-process-benchmark-") as work:
        work_dir = Path(work)
        truth = make_demo_scene(work_dir / "truth", demo)
        frames, masks = export_inputs(truth, work_dir)
        names = [o.name for o in truth.objects]
        reports: List[ProcessReport] = []
        for i in range(config.repeats):
            process = ProcessDataConfig(
                data=frames,
                output_dir=work_dir / f"scene-{i}",
                masks=masks,
                object_names=names[1:],
                focal_length=None if config.estimate_focal else truth.camera.fx,
                sampling=FrameSamplingConfig(frame_rate=demo.fps),
                preview=i == 0,
                trust=TrustConfig(keep_untrusted=True),
            )
            start = time.perf_counter()
            reports.append(process_video(process))
            reports[-1].stage_seconds["total"] = time.perf_counter() - start
        best = min(reports, key=lambda r: r.stage_seconds["total"])
        scene = load_scene(best.scene.root)
        print(f"\n### {name}\n")
        print(f"load average {load_average()}; intrinsics {best.camera_source}\n")
        stages = list(best.stage_seconds)
        print("| " + " | ".join(stages) + " |")
        print("|" + "---|" * len(stages))
        print("| " + " | ".join(f"{best.stage_seconds[s]:.2f}" for s in stages) + " |")
        print("\nSfM per object (s): " + ", ".join(f"{k} {v:.2f}" for k, v in best.sfm_seconds.items()))
        print("\n| object | registered | keypoints | rotation error mean / max (deg) "
              "| translation error mean / max (%) | depth error median / p90 (%) | untrusted |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(accuracy_rows(scene, truth, names, best)))
        for o in best.objects:
            if o.untrusted:
                print(f"\nUntrusted: {o.name}: {o.untrusted}")
        failures = [f"{o.name}: {reason} (frames {frames_})"
                    for o in best.objects for reason, frames_ in o.unregistered.items()]
        failures += [f"{o.name}: left out: {o.failure}" for o in best.objects if o.failure]
        if failures:
            print("\nNot registered: " + "; ".join(failures))


def main(config: BenchmarkConfig) -> None:
    print(machine_info())
    for name, demo in SCENES.items():
        run(name, replace(demo), config)


if __name__ == "__main__":
    main(tyro.cli(BenchmarkConfig))
