"""Time osn-process-data per stage on scenes given as frames and masks only, and score the result against
the scene's ground truth.

    OMP_NUM_THREADS=1 python benchmarks/process_data.py                 # the tables in PROCESS_DATA_RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/process_data.py --scenes room-a --repeats 1

Scenes: the default demo (128x96, 40 frames, background + 3 objects), the test suite's scene (128x96, 24
frames, background + box), and the Cycles-rendered indoor scenes of ``benchmarks/indoor_scenes.py`` (320x240,
40 frames; rendered and cached on first use, which needs the ``blender`` extra). Intrinsics are given
(--focal-length) unless ``--estimate-focal``. Objects whose registration the pipeline does not trust are kept
(``--trust.keep-untrusted``) so that their errors can be shown, and marked in the "untrusted" column.

Per object: registered frames of the frames where its true mask has pixels; keypoints; rotation error (median
and max, degrees) and camera-centre error (median, as a percentage of the object's largest true box side: the
room's for the background) after the best similarity alignment of the camera centres; and the depth-ratio
spread, the interquartile range over the median of own / true depth at its keypoints (0 for a correct
reconstruction, whose unit is one number). The rotation error is also given after the best rotation alignment alone
(``rotation_disagreement_deg``): on a short or nearly straight arc of camera centres the similarity leaves the
rotation about the arc free.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import tyro

from indoor_scenes import LAYOUTS, cache_dir, ensure_scene
from machine import load_average, machine_info
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.scene_format import Scene, read_depth
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.evaluation import (
    depth_ratio_spread,
    rotation_disagreement_deg,
    trajectory_error,
    truth_depth_at_keypoints,
)
from osn_nerfstudio.process.features import FeatureConfig
from osn_nerfstudio.process.frames import FrameSamplingConfig
from osn_nerfstudio.process.pipeline import ProcessDataConfig, ProcessReport, process_video
from osn_nerfstudio.process.trust import TrustConfig

DEMO_SCENES: Dict[str, DemoSceneConfig] = {
    "demo": DemoSceneConfig(),
    "test-scene": DemoSceneConfig(
        seed=0, width=128, height=96, num_frames=24, num_objects=1, supersampling=2, test_view_every=24
    ),
}
INDOOR_FRAME_RATE = 10.0
"""The indoor scenes' frame rate (frames are kept as they are either way)."""


@dataclass
class BenchmarkConfig:
    """What to run."""

    scenes: List[str] = field(default_factory=lambda: [*DEMO_SCENES, *LAYOUTS])
    """Scenes to process: demo, test-scene, and the indoor scenes (room-a, room-b, room-c)."""
    repeats: int = 2
    """Runs per scene; the table reports the fastest total and its stages."""
    estimate_focal: bool = False
    """Let the background's SfM estimate the focal length instead of giving the true one."""
    features: bool = False
    """Add SIFT feature tracks (``--features.enabled``)."""
    silhouettes: bool = False
    """Register every foreground object from its silhouettes (``--silhouettes.prefer``), to score that registration."""


def truth_scene(name: str, work: Path) -> Tuple[Scene, float]:
    """The ground-truth scene ``name`` and its frame rate."""
    if name in DEMO_SCENES:
        return make_demo_scene(work / "truth", DEMO_SCENES[name]), DEMO_SCENES[name].fps
    if name in LAYOUTS:
        return load_scene(ensure_scene(name, cache_dir())), INDOOR_FRAME_RATE
    raise SystemExit(f"unknown scene {name!r}: choose from {[*DEMO_SCENES, *LAYOUTS]}")


def export_inputs(truth: Scene, work: Path) -> Tuple[Path, Path]:
    """The frames and masks of ``truth``, nothing else, as a user would have them."""
    frames, masks = work / "frames", work / "masks"
    frames.mkdir()
    masks.mkdir()
    for v, frame in enumerate(truth.frames):
        (frames / f"{v:05d}.png").write_bytes(truth.path(frame.image).read_bytes())
        (masks / f"{v:05d}.png").write_bytes(truth.path(frame.mask).read_bytes())
    return frames, masks


COLUMNS = ("object", "registered / visible", "keypoints", "rotation error median / max (deg)",
           "rotation error, rotations aligned, median (deg)",
           "centre error median (% of size)", "depth-ratio spread (%)", "halves differ (deg)", "from",
           "turn ambiguity (deg)", "untrusted")


def accuracy_rows(scene: Scene, truth: Scene, report: ProcessReport) -> List[str]:
    """Markdown rows: per object, registration and errors against the ground truth."""
    depth = np.stack([read_depth(truth.path(f.depth)) for f in truth.frames])
    labels = np.stack([truth.load_mask(v) for v in range(truth.num_frames)])
    names = [o.name for o in truth.objects]
    processed = [o.name for o in scene.objects]
    rows = []
    for truth_k, name in enumerate(names):
        visible = int(np.any(labels == truth_k, axis=(1, 2)).sum())
        if name not in processed:
            reason = next((o.failure for o in report.objects if o.name == name and o.failure), "")
            rows.append(f"| {name} | left out: 0 / {visible} | | | | | | | | | {reason} |")
            continue
        k = processed.index(name)
        registered = scene.registered[k]
        error = trajectory_error(scene.camera_to_object[k][registered], truth.camera_to_object[truth_k][registered])
        rotations = (scene.camera_to_object[k][registered, :3, :3], truth.camera_to_object[truth_k][registered, :3, :3])
        aligned = float(np.median(rotation_disagreement_deg(*rotations)))
        size = float(np.max(truth.objects[truth_k].bbox_max - truth.objects[truth_k].bbox_min))
        kp = scene.keypoints.select(scene.keypoints.object_id == k)
        on_object, true_depth = truth_depth_at_keypoints(kp, depth, labels, truth_k)
        spread = depth_ratio_spread(kp.depth[on_object], true_depth)
        obj = next(o for o in report.objects if o.name == name)
        rows.append(
            f"| {name} | {registered.sum()} / {visible} | {len(kp)} | "
            f"{error.rotation_deg_median:.2f} / {error.rotation_deg_max:.2f} | {aligned:.2f} | "
            f"{100 * error.centre_error_median / size:.2f} | {100 * spread:.1f} | {obj.half_disagreement_deg:.1f} | "
            f"{obj.source} | {obj.turn_ambiguity_deg:.1f} | {'yes' if obj.untrusted else 'no'} |"
        )
    return rows


def user_settings(truth: Scene, frame_rate: float, work: Path, output_dir: Path) -> ProcessDataConfig:
    """What a user would run on ``truth``'s video: its frames and masks (exported into ``work``), object names, true
    focal length and frame rate, every other setting the command's default."""
    frames, masks = export_inputs(truth, work)
    return ProcessDataConfig(
        data=frames,
        output_dir=output_dir,
        masks=masks,
        object_names=[o.name for o in truth.objects[1:]],
        focal_length=truth.camera.fx,
        sampling=FrameSamplingConfig(frame_rate=frame_rate),
    )


def process(truth: Scene, frame_rate: float, work: Path, config: BenchmarkConfig) -> ProcessReport:
    """osn-process-data on the truth's frames and masks, ``config.repeats`` times; the fastest run's report."""
    user = user_settings(truth, frame_rate, work, work / "scene-0")
    reports: List[ProcessReport] = []
    for i in range(config.repeats):
        settings = replace(
            user,
            output_dir=work / f"scene-{i}",
            focal_length=None if config.estimate_focal else user.focal_length,
            preview=i == 0,
            trust=TrustConfig(keep_untrusted=True),
            features=FeatureConfig(enabled=config.features),
            silhouettes=replace(user.silhouettes, prefer=config.silhouettes),
        )
        start = time.perf_counter()
        reports.append(process_video(settings))
        reports[-1].stage_seconds["total"] = time.perf_counter() - start
    return min(reports, key=lambda r: r.stage_seconds["total"])


def run(name: str, config: BenchmarkConfig, show: Callable[[str], None] = print) -> None:
    with tempfile.TemporaryDirectory(prefix="osn-process-benchmark-") as work:
        truth, frame_rate = truth_scene(name, Path(work))
        best = process(truth, frame_rate, Path(work), config)
        scene = load_scene(best.scene.root)
        show(f"\n### {name} ({truth.camera.width}x{truth.camera.height}, {truth.num_frames} frames)\n")
        show(f"load average {load_average()}; intrinsics {best.camera_source}\n")
        stages = list(best.stage_seconds)
        show("| " + " | ".join(stages) + " |")
        show("|" + "---|" * len(stages))
        show("| " + " | ".join(f"{best.stage_seconds[s]:.2f}" for s in stages) + " |")
        show("\nSfM per object (s): " + ", ".join(f"{k} {v:.2f}" for k, v in best.sfm_seconds.items()) + "\n")
        show("| " + " | ".join(COLUMNS) + " |")
        show("|" + "---|" * len(COLUMNS))
        show("\n".join(accuracy_rows(scene, truth, best)))
        for o in best.objects:
            if o.untrusted:
                show(f"\nUntrusted: {o.name}: {o.untrusted}")
        failures = [f"{o.name}: {reason} (frames {frames_})"
                    for o in best.objects for reason, frames_ in o.unregistered.items()]
        if failures:
            show("\nNot registered: " + "; ".join(failures))


def main(config: BenchmarkConfig) -> None:
    print(machine_info())
    for name in config.scenes:
        run(name, config)


if __name__ == "__main__":
    main(tyro.cli(BenchmarkConfig))
