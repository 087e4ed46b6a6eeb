"""Check an OSN scene directory against docs/scene-format.md and summarise it.

    osn-validate-scene path/to/scene

Exits 0 and prints a summary for a valid scene; exits 1 and lists every problem otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from rich.console import Console
from rich.table import Table
from rich.text import Text

from osn_nerfstudio.data.scene_format import Scene, SceneFormatError
from osn_nerfstudio.data.validation import load_scene


@dataclass
class ValidateScene:
    """Validate an OSN scene directory and print a summary of it."""

    scene: tyro.conf.Positional[Path]
    """Scene directory (the one holding scene.json)."""
    check_files: bool = True
    """Also decode every image, mask and depth map; turn off for a quick check of the metadata alone."""

    def main(self) -> int:
        try:
            scene = load_scene(self.scene, check_files=self.check_files)
        except SceneFormatError as err:
            # Text, not markup: messages contain brackets ("frames[2]", "[1, 2]") and paths.
            Console(stderr=True).print(Text(str(err), style="red"), soft_wrap=True)
            return 1
        console = Console()
        console.print(scene_table(scene))
        console.print(object_table(scene))
        checked = "metadata and files" if self.check_files else "metadata only; files not opened"
        console.print(Text(f"{scene.root}: valid OSN scene ({checked}).", style="green"), soft_wrap=True)
        return 0


def _number(value: float) -> str:
    return f"{value:.6g}"


def _evaluation_summary(scene: Scene) -> str:
    parts = []
    ev = scene.evaluation
    if ev is not None:
        parts.append(f"{len(ev.test_views)} test view(s)")
        if ev.relative_scales is not None:
            parts.append(f"relative scales [{', '.join(_number(s) for s in ev.relative_scales)}]")
    depth_frames = sum(f.depth is not None for f in scene.frames)
    if depth_frames:
        parts.append(f"GT depth in {depth_frames}/{scene.num_frames} frames")
    return ", ".join(parts) if parts else "none"


def scene_table(scene: Scene) -> Table:
    cam, times = scene.camera, scene.times
    table = Table(title=f"OSN scene {scene.root}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "frames": f"{scene.num_frames} (times {_number(times.min())} to {_number(times.max())})",
        "resolution": f"{cam.width}x{cam.height}",
        "intrinsics": f"fx {_number(cam.fx)}, fy {_number(cam.fy)}, cx {_number(cam.cx)}, cy {_number(cam.cy)}",
        "objects": str(scene.num_objects),
        "keypoints": str(len(scene.keypoints)),
        "mask ignore label": str(scene.mask_ignore_label),
        "evaluation": _evaluation_summary(scene),
        "provenance": str(scene.provenance.get("tool", "not recorded")),
    }
    for name, value in rows.items():
        table.add_row(name, Text(value))
    return table


def object_table(scene: Scene) -> Table:
    table = Table(title="Objects", title_justify="left")
    for column in ("id", "name", "registered frames", "keypoints", "box size (own units)"):
        table.add_column(column, justify="right" if column in ("id", "keypoints") else "left")
    counts = np.bincount(scene.keypoints.object_id, minlength=scene.num_objects)
    for k, obj in enumerate(scene.objects):
        size = " x ".join(f"{s:.3g}" for s in obj.bbox_max - obj.bbox_min)
        registered = f"{int(scene.registered[k].sum())}/{scene.num_frames}"
        table.add_row(str(k), Text(obj.name), registered, str(int(counts[k])), size)
    return table


def entrypoint() -> None:
    """Console script ``osn-validate-scene``."""
    sys.exit(tyro.cli(ValidateScene).main())


if __name__ == "__main__":
    entrypoint()
