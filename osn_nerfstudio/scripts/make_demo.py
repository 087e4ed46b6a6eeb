"""osn-make-demo: generate the procedural demo scene (a textured room with moving, occluding objects)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import tyro
from rich.console import Console
from rich.table import Table

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, ensure_demo_scene, make_demo_scene
from osn_nerfstudio.data.scene_format import Scene
from osn_nerfstudio.data.validation import load_scene

CONSOLE = Console()


@dataclass
class MakeDemo(DemoSceneConfig):
    """Generate the procedural OSN demo scene, or reuse it from the cache when no output is given."""

    output: Optional[Path] = None
    """Directory to create (must not exist). By default the scene goes to, or is reused from, the demo cache
    ($OSN_CACHE_DIR/demo or ~/.cache/osn-nerfstudio/demo)."""

    def scene_config(self) -> DemoSceneConfig:
        return DemoSceneConfig(**{f.name: getattr(self, f.name) for f in fields(DemoSceneConfig)})

    def main(self) -> None:
        if self.output is None:
            root = ensure_demo_scene(self.scene_config())
        elif self.output.exists():
            Console(stderr=True).print(
                f"[bold red]{self.output} already exists; refusing to overwrite it.[/bold red] "
                "Choose another --output, or delete that directory first."
            )
            raise SystemExit(1)
        else:
            make_demo_scene(self.output, self.scene_config())
            root = self.output
        print_summary(load_scene(root, check_files=False))


def print_summary(scene: Scene) -> None:
    """Where the scene is, its size, and per object its keypoints, registered frames and true scale."""
    camera = scene.camera
    num_views = len(scene.evaluation.test_views) if scene.evaluation else 0
    CONSOLE.print(f"[bold green]Demo scene:[/bold green] {scene.root.resolve()}")
    CONSOLE.print(
        f"{scene.num_frames} frames at {camera.width}x{camera.height}, {scene.num_objects} objects "
        f"(background included), {len(scene.keypoints)} keypoints, {num_views} test views"
    )
    counts = np.bincount(scene.keypoints.object_id, minlength=scene.num_objects)
    scales = scene.evaluation.relative_scales if scene.evaluation else None
    table = Table("id", "object", "keypoints", "per frame", "registered frames", "true scale")
    for k, obj in enumerate(scene.objects):
        table.add_row(
            str(k),
            obj.name,
            str(counts[k]),
            f"{counts[k] / scene.num_frames:.1f}",
            str(int(scene.registered[k].sum())),
            "-" if scales is None else f"{scales[k]:.4g}",
        )
    CONSOLE.print(table)


def entrypoint() -> None:
    """Console script entry point (osn-make-demo)."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(MakeDemo).main()


if __name__ == "__main__":
    entrypoint()
