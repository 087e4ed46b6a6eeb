"""Tiny, exactly consistent OSN scenes for tests, built by hand with numpy.

The scene is three boxes seen by a moving 16x12 pinhole camera: object 0 is a room-sized box
around the camera (the background), objects 1 and 2 are small boxes that move and spin. Images,
masks and depth maps come from ray casting the boxes, so every keypoint lies inside its object's
mask, keypoint depths agree with the poses, and the evaluation block holds the true scales.

Each foreground object k is stored in its own units: its coordinates are background coordinates
divided by its true scale ``SCALES[k]``, exactly as a per-object structure-from-motion run would
produce (up to the unknown scale). Not named ``test_*`` so pytest does not collect it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from osn_nerfstudio.data.scene_format import (
    Evaluation,
    Frame,
    Keypoints,
    PinholeCamera,
    Scene,
    SceneObject,
    TestView,
    write_amodal_depth,
    write_depth,
    write_mask,
    write_rgb,
    write_scene_metadata,
)

WIDTH, HEIGHT = 16, 12
NAMES = ["background", "red-box", "blue-box"]
SCALES = np.array([1.0, 0.5, 2.0])
"""True scale of each object relative to the background."""
HALF_SIZES = np.array([[3.0, 2.0, 4.0], [0.6, 0.6, 0.6], [0.2, 0.25, 0.2]])
"""Half extents of each box in the object's own units."""
COLOURS = np.array([[200, 200, 190], [220, 40, 30], [30, 60, 220]], dtype=np.float64)
UNREGISTERED = (2, 0)
"""(object, frame) whose pose is unknown, as after a structure-from-motion failure."""
AMODAL_DEPTH = "ground_truth/amodal_depth.npy"
IGNORED_PIXEL = (3, 0, 0)
"""(frame, row, column) of the one pixel labelled with the ignore label."""


def rigid(yaw: float, translation) -> np.ndarray:
    """4x4 rotation about +y by ``yaw`` radians, then translation."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    pose[:3, 3] = translation
    return pose


def camera_to_background(v: int) -> np.ndarray:
    return rigid(0.03 * v, [0.05 * v, 0.0, 0.0])


def object_to_background(k: int, v: int) -> np.ndarray:
    """Pose of object k in background units at frame v (the object's scale is applied separately)."""
    if k == 0:
        return np.eye(4)
    if k == 1:
        return rigid(0.3 * v, [-0.9 + 0.1 * v, 0.1, -3.0])
    return rigid(-0.2 * v, [0.9, 0.3 - 0.1 * v, -3.5])


def camera_to_object(k: int, v: int, camera: Optional[np.ndarray] = None) -> np.ndarray:
    """``P_k(v)`` in object k's own units: maps camera coordinates divided by s_k to object coordinates."""
    camera = camera_to_background(v) if camera is None else camera
    relative = np.linalg.inv(object_to_background(k, v)) @ camera  # camera -> object, background units
    relative[:3, 3] /= SCALES[k]
    return relative


def _f32(values: np.ndarray) -> np.ndarray:
    """Round to float32 so the values survive the writer's float32 storage exactly."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def render(camera: np.ndarray, v: int, num_objects: int, only: Optional[int] = None):
    """Ray cast camera-to-background pose ``camera`` at frame v: (rgb uint8, labels, z-depth in background units);
    with ``only``, that object alone (its amodal depth, inf where it is missed)."""
    u, w = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    # OpenGL camera: x right, y up, looking along -z; a direction with z = -1 makes t the z-depth.
    directions = np.stack([(u - WIDTH / 2) / 20.0, -(w - HEIGHT / 2) / 20.0, -np.ones_like(u)], -1)
    depth = np.full((HEIGHT, WIDTH), np.inf)
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    shade = np.ones((HEIGHT, WIDTH))
    for k in range(num_objects) if only is None else [only]:
        # x = P_k(v) (X_camera / s_k): an affine map, so the ray parameter stays the z-depth.
        to_object = camera_to_object(k, v, camera)
        origin = to_object[:3, 3]
        direction = directions @ to_object[:3, :3].T / SCALES[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = (-HALF_SIZES[k] - origin) / direction
            t1 = (HALF_SIZES[k] - origin) / direction
        near = np.minimum(t0, t1).max(-1)
        far = np.maximum(t0, t1).min(-1)
        hit = far if k == 0 else near  # the camera is inside the background box
        visible = (near <= far) & (hit > 0) & (hit < depth)
        depth[visible], labels[visible] = hit[visible], k
        point = origin + hit[..., None] * direction
        shade[visible] = 0.75 + 0.25 * np.cos(4.0 * point[visible]).mean(-1)
    rgb = np.clip(COLOURS[labels] * shade[..., None], 0, 255).round().astype(np.uint8)
    return rgb, labels, depth


@dataclass
class SceneData:
    """A scene plus the pixels of every file it names, not yet written."""

    scene: Scene
    images: Dict[str, np.ndarray] = field(default_factory=dict)
    masks: Dict[str, np.ndarray] = field(default_factory=dict)
    depths: Dict[str, np.ndarray] = field(default_factory=dict)
    amodal: Dict[str, np.ndarray] = field(default_factory=dict)

    def write(self) -> Scene:
        root = self.scene.root
        for relative, depth in self.amodal.items():
            write_amodal_depth(root / relative, depth)
        for relative, rgb in self.images.items():
            write_rgb(root / relative, rgb)
        for relative, labels in self.masks.items():
            write_mask(root / relative, labels)
        for relative, depth in self.depths.items():
            write_depth(root / relative, depth)
        write_scene_metadata(self.scene)
        return self.scene


def build_scene(
    root: Path,
    num_frames: int = 4,
    num_objects: int = 3,
    evaluation: bool = True,
    depth: bool = True,
    ignore_label: int = 255,
    keypoints_per_frame: int = 3,
) -> SceneData:
    """A consistent scene rooted at ``root``; call ``.write()`` to put it on disk."""
    files = SceneData(scene=None)  # type: ignore[arg-type]  # the scene is set once built
    K, F = num_objects, num_frames
    registered = np.ones((K, F), dtype=bool)
    if K > UNREGISTERED[0] and F > max(1, UNREGISTERED[1]):  # every object keeps a registered frame
        registered[UNREGISTERED] = False
    poses = np.full((K, F, 4, 4), np.nan)
    frames: List[Frame] = []
    rows: List[tuple] = []
    for v in range(F):
        rgb, labels, z = render(camera_to_background(v), v, K)
        if v == IGNORED_PIXEL[0]:
            labels[IGNORED_PIXEL[1:]] = ignore_label
        frame = Frame(image=f"images/{v:05d}.png", mask=f"masks/{v:05d}.png", time=0.25 * v)
        files.images[frame.image], files.masks[frame.mask] = rgb, labels
        if depth:
            frame.depth = f"depth/{v:05d}.npy"
            files.depths[frame.depth] = z.astype(np.float32)
        frames.append(frame)
        for k in np.flatnonzero(registered[:, v]):
            poses[k, v] = camera_to_object(k, v)
            ys, xs = np.nonzero(labels == k)
            assert ys.size, f"scene_factory: object {k} is not visible in frame {v}"
            for i in np.linspace(0, ys.size - 1, keypoints_per_frame).round().astype(int):
                weight = 1.0 if i % 2 == 0 else 0.5
                rows.append((k, v, xs[i] + 0.5, ys[i] + 0.5, z[ys[i], xs[i]] / SCALES[k], weight))
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    keypoints = Keypoints(
        object_id=table[:, 0].astype(np.int64),
        frame=table[:, 1].astype(np.int64),
        uv=_f32(table[:, 2:4]),
        depth=_f32(table[:, 4]),
        weight=_f32(table[:, 5]),
    )
    objects = [SceneObject(NAMES[k], -HALF_SIZES[k].copy(), HALF_SIZES[k].copy()) for k in range(K)]
    files.scene = Scene(
        root=Path(root),
        camera=PinholeCamera(width=WIDTH, height=HEIGHT, fx=20.0, fy=20.0, cx=WIDTH / 2, cy=HEIGHT / 2),
        frames=frames,
        objects=objects,
        camera_to_object=poses,
        registered=registered,
        keypoints=keypoints,
        mask_ignore_label=ignore_label,
        evaluation=_evaluation(files, F, K) if evaluation else None,
        provenance={"tool": "tests/scene_factory.py", "settings": {"frames": F, "objects": K}},
    )
    return files


def _evaluation(files: SceneData, num_frames: int, num_objects: int) -> Evaluation:
    """One held-out camera beside the training camera of the middle frame."""
    v = num_frames // 2
    pose = camera_to_background(v) @ rigid(-0.05, [0.1, 0.05, 0.2])
    rgb, labels, z = render(pose, v, num_objects)
    view = TestView(
        image="test/00000.png",
        time=0.25 * v,
        camera_to_background=pose,
        mask="test/00000_mask.png",
        depth="test/00000_depth.npy",
        covisibility="test/00000_covisible.png",
    )
    files.images[view.image], files.masks[view.mask], files.depths[view.depth] = rgb, labels, z.astype(np.float32)
    files.masks[view.covisibility] = (labels != 2).astype(np.uint8) * 255  # say, the blue box was never seen
    amodal = [
        [render(camera_to_background(f), f, num_objects, only=k)[2] for f in range(num_frames)]
        for k in range(num_objects)
    ]
    files.amodal[AMODAL_DEPTH] = np.array(amodal, dtype=np.float32)
    return Evaluation(test_views=[view], relative_scales=SCALES[:num_objects].copy(), amodal_depth=AMODAL_DEPTH)


def write_scene(root: Path, **options: Any) -> Scene:
    """Build a consistent scene (see ``build_scene`` for the options) and write it to ``root``."""
    return build_scene(root, **options).write()


def edit_json(root: Path, edit: Callable[[Dict[str, Any]], Any]) -> None:
    """Apply ``edit`` to the parsed ``scene.json`` of ``root`` in place and write it back."""
    path = Path(root) / "scene.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def edit_npz(root: Path, name: str, edit: Callable[[Dict[str, np.ndarray]], Any]) -> None:
    """Apply ``edit`` to the arrays of ``root/name`` (a dict, modified in place) and write them back."""
    path = Path(root) / name
    with np.load(path) as archive:
        arrays = {k: archive[k].copy() for k in archive.files}
    edit(arrays)
    np.savez(path, **arrays)
