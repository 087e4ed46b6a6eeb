"""Every rule an OSN scene must satisfy, each check naming the file, frame or object at fault.

``load_scene`` is the one entry point the rest of the package uses: a scene that passes it has
consistent shapes, rigid finite poses, keypoints inside the image and in registered frames, and
mask labels that name objects, so training can rely on all of that without re-checking.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

from osn_nerfstudio.data.scene_format import (
    KEYPOINTS_FILE,
    POSES_FILE,
    SCENE_FILE,
    Scene,
    SceneFormatError,
    read_depth,
    read_mask,
    read_scene,
)

RIGIDITY_TOLERANCE = 1e-3
"""Largest accepted |R^T R - I| entry and |det R - 1| of a pose's rotation block."""
MAX_LISTED_PROBLEMS = 20


class SceneValidationError(SceneFormatError):
    """A scene violates one or more rules; ``problems`` lists each one."""

    def __init__(self, root: Path, problems: List[str]):
        self.root = root
        self.problems = problems
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [f"{root}: invalid OSN scene ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        lines.append("See docs/scene-format.md for the rules.")
        super().__init__("\n".join(lines))


def load_scene(root: Path | str, check_files: bool = True) -> Scene:
    """Read and validate a scene directory; raise ``SceneFormatError`` naming every problem."""
    scene = read_scene(root)
    validate_scene(scene, check_files=check_files)
    return scene


def validate_scene(scene: Scene, check_files: bool = True) -> None:
    problems: List[str] = []
    problems += _check_camera(scene)
    problems += _check_frames(scene)
    problems += _check_objects(scene)
    problems += _check_poses(scene)
    problems += _check_keypoints(scene)
    problems += _check_evaluation(scene)
    if check_files and not problems:
        problems += _check_frame_files(scene)
        problems += _check_test_view_files(scene)
    if problems:
        raise SceneValidationError(scene.root, problems)


def object_label(scene: Scene, k: int) -> str:
    return f"object {k} '{scene.objects[k].name}'" if 0 <= k < scene.num_objects else f"object {k}"


def _check_camera(scene: Scene) -> List[str]:
    cam = scene.camera
    problems = []
    if cam.width <= 0 or cam.height <= 0:
        problems.append(f"{SCENE_FILE}: camera size {cam.width}x{cam.height} must be positive.")
    values = np.array([cam.fx, cam.fy, cam.cx, cam.cy])
    if not np.all(np.isfinite(values)) or cam.fx <= 0 or cam.fy <= 0:
        problems.append(f"{SCENE_FILE}: camera intrinsics fx={cam.fx}, fy={cam.fy} must be finite and positive.")
    return problems


def _check_frames(scene: Scene) -> List[str]:
    if scene.num_frames == 0:
        return [f"{SCENE_FILE}: the scene has no frames."]
    times = scene.times
    problems = []
    if not np.all(np.isfinite(times)):
        bad = int(np.flatnonzero(~np.isfinite(times))[0])
        problems.append(f"frame {bad} ({scene.frames[bad].image}): time is not finite.")
    else:
        steps = np.diff(times)
        if np.any(steps <= 0):
            bad = int(np.flatnonzero(steps <= 0)[0]) + 1
            problems.append(
                f"frame {bad} ({scene.frames[bad].image}): time {times[bad]} is not after the previous frame's "
                f"{times[bad - 1]}; frame times must strictly increase."
            )
    return problems


def _check_objects(scene: Scene) -> List[str]:
    if scene.num_objects == 0:
        return [f"{SCENE_FILE}: the scene has no objects; object 0 must be the background."]
    problems = []
    names = [o.name for o in scene.objects]
    for k, obj in enumerate(scene.objects):
        if not obj.name:
            problems.append(f"object {k}: name is empty.")
        elif names.count(obj.name) > 1 and names.index(obj.name) == k:
            problems.append(f"{object_label(scene, k)}: name is used by more than one object.")
        lo, hi = obj.bbox_min, obj.bbox_max
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            problems.append(f"{object_label(scene, k)}: bounding box corners must be 3 finite numbers each.")
        elif np.any(hi <= lo):
            problems.append(f"{object_label(scene, k)}: bounding box max {hi.tolist()} is not above min {lo.tolist()}.")
    if 0 <= scene.mask_ignore_label < scene.num_objects:
        problems.append(
            f"{SCENE_FILE}: mask_ignore_label {scene.mask_ignore_label} collides with {object_label(scene, scene.mask_ignore_label)}."
        )
    return problems


def rigidity_error(pose: np.ndarray) -> float:
    """How far a 4x4 matrix is from a proper rigid transform (0 for an exact one)."""
    rot = pose[:3, :3]
    orthonormal = np.abs(rot.T @ rot - np.eye(3)).max()
    handed = abs(np.linalg.det(rot) - 1.0)
    bottom = np.abs(pose[3] - np.array([0.0, 0.0, 0.0, 1.0])).max()
    return float(max(orthonormal, handed, bottom))


def _check_poses(scene: Scene) -> List[str]:
    K, F = scene.num_objects, scene.num_frames
    poses, registered = scene.camera_to_object, scene.registered
    if poses.shape != (K, F, 4, 4) or registered.shape != (K, F):
        return [
            f"{POSES_FILE}: camera_to_object has shape {list(poses.shape)} and registered {list(registered.shape)}; "
            f"expected [{K}, {F}, 4, 4] and [{K}, {F}] for {K} objects and {F} frames."
        ]
    problems = []
    for k in range(K):
        frames = np.flatnonzero(registered[k])
        if frames.size == 0:
            problems.append(f"{POSES_FILE}: {object_label(scene, k)} is not registered in any frame.")
            continue
        if k == 0 and frames.size < F:
            missing = np.flatnonzero(~registered[0])
            problems.append(
                f"{POSES_FILE}: the background ({object_label(scene, 0)}) must be registered in every frame; "
                f"it is missing in frame(s) {missing[:10].tolist()}."
            )
        for v in frames:
            pose = poses[k, v]
            if not np.all(np.isfinite(pose)):
                problems.append(f"{POSES_FILE}: {object_label(scene, k)}, frame {v}: pose has non-finite entries.")
            elif (err := rigidity_error(pose)) > RIGIDITY_TOLERANCE:
                problems.append(
                    f"{POSES_FILE}: {object_label(scene, k)}, frame {v}: pose is not rigid (error {err:.3g}); "
                    "expected a rotation with determinant +1 and bottom row [0, 0, 0, 1]."
                )
    return problems


def _check_keypoints(scene: Scene) -> List[str]:
    kp = scene.keypoints
    n = len(kp)
    shapes = {"frame": kp.frame.shape, "uv": kp.uv.shape, "depth": kp.depth.shape, "weight": kp.weight.shape}
    expected = {"frame": (n,), "uv": (n, 2), "depth": (n,), "weight": (n,)}
    wrong = [f"{k} {list(v)}" for k, v in shapes.items() if v != expected[k]]
    if kp.object_id.ndim != 1 or wrong:
        return [f"{KEYPOINTS_FILE}: arrays disagree in length with object_id [{n}]: {', '.join(wrong)}."]
    K, F = scene.num_objects, scene.num_frames
    problems = []

    def report(rows: np.ndarray, what: str) -> None:
        if rows.size:
            i = int(rows[0])
            problems.append(
                f"{KEYPOINTS_FILE}: {rows.size} keypoint(s) {what}; first is row {i} "
                f"({object_label(scene, int(kp.object_id[i]))}, frame {int(kp.frame[i])})."
            )

    report(np.flatnonzero((kp.object_id < 0) | (kp.object_id >= K)), f"name an object outside 0..{K - 1}")
    report(np.flatnonzero((kp.frame < 0) | (kp.frame >= F)), f"name a frame outside 0..{F - 1}")
    if problems:
        return problems
    u, v = kp.uv[:, 0], kp.uv[:, 1]
    inside = np.isfinite(u) & np.isfinite(v) & (u >= 0) & (v >= 0) & (u <= scene.camera.width) & (v <= scene.camera.height)
    report(np.flatnonzero(~inside), f"lie outside the {scene.camera.width}x{scene.camera.height} image")
    report(np.flatnonzero(~(np.isfinite(kp.depth) & (kp.depth > 0))), "have a depth that is not finite and positive")
    report(np.flatnonzero(~(np.isfinite(kp.weight) & (kp.weight > 0) & (kp.weight <= 1))), "have a weight outside (0, 1]")
    if scene.registered.shape == (K, F):
        report(np.flatnonzero(~scene.registered[kp.object_id, kp.frame]), "lie in frames where their object is not registered")
    counts = np.bincount(kp.object_id, minlength=K)
    for k in np.flatnonzero(counts == 0):
        problems.append(f"{KEYPOINTS_FILE}: {object_label(scene, int(k))} has no keypoints; its scale cannot be bounded.")
    return problems


def _check_evaluation(scene: Scene) -> List[str]:
    ev = scene.evaluation
    if ev is None:
        return []
    problems = []
    if ev.relative_scales is not None:
        s = ev.relative_scales
        if s.shape != (scene.num_objects,):
            problems.append(f"{SCENE_FILE}: evaluation.relative_scales has {s.size} entries for {scene.num_objects} objects.")
        elif not np.all(np.isfinite(s)) or np.any(s <= 0) or abs(s[0] - 1.0) > 1e-9:
            problems.append(f"{SCENE_FILE}: evaluation.relative_scales must be finite and positive with entry 0 (background) = 1.")
    times = scene.times
    for i, view in enumerate(ev.test_views):
        pose = view.camera_to_background
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)) or rigidity_error(pose) > RIGIDITY_TOLERANCE:
            problems.append(f"test view {i} ({view.image}): camera_to_background is not a finite rigid 4x4 pose.")
        if not (times.min() <= view.time <= times.max()):
            problems.append(f"test view {i} ({view.image}): time {view.time} is outside the video [{times.min()}, {times.max()}].")
    return problems


def _image_size(path: Path) -> Optional[tuple]:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None


def _check_image(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: image file {relative} is missing."
    size = _image_size(path)
    if size is None:
        return f"{where}: image file {relative} cannot be read as an image."
    if size != (scene.camera.width, scene.camera.height):
        return f"{where}: image {relative} is {size[0]}x{size[1]} but the camera is {scene.camera.width}x{scene.camera.height}."
    return None


def _check_mask(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: mask file {relative} is missing."
    try:
        labels = read_mask(path)
    except SceneFormatError as err:
        return f"{where}: {err}"
    if labels.shape != (scene.camera.height, scene.camera.width):
        return f"{where}: mask {relative} is {labels.shape[1]}x{labels.shape[0]} but the camera is {scene.camera.width}x{scene.camera.height}."
    values = np.unique(labels)
    unknown = values[(values >= scene.num_objects) & (values != scene.mask_ignore_label)]
    if unknown.size:
        return (
            f"{where}: mask {relative} has label(s) {unknown[:10].tolist()} that name no object "
            f"(objects are 0..{scene.num_objects - 1}, ignore label {scene.mask_ignore_label})."
        )
    return None


def _check_depth(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: depth file {relative} is missing."
    try:
        depth = read_depth(path)
    except SceneFormatError as err:
        return f"{where}: {err}"
    if depth.shape != (scene.camera.height, scene.camera.width):
        return f"{where}: depth {relative} has shape {list(depth.shape)}, expected [{scene.camera.height}, {scene.camera.width}]."
    if np.any(np.isnan(depth)) or np.any(depth < 0):
        return f"{where}: depth {relative} has NaN or negative values (use 0 or inf for pixels without depth)."
    return None


def _check_frame_files(scene: Scene) -> List[str]:
    problems = []
    for v, frame in enumerate(scene.frames):
        where = f"frame {v}"
        checks = [_check_image(scene, where, frame.image), _check_mask(scene, where, frame.mask)]
        if frame.depth is not None:
            checks.append(_check_depth(scene, where, frame.depth))
        problems += [c for c in checks if c]
    return problems


def _check_test_view_files(scene: Scene) -> List[str]:
    if scene.evaluation is None:
        return []
    problems = []
    for i, view in enumerate(scene.evaluation.test_views):
        where = f"test view {i}"
        checks = [_check_image(scene, where, view.image)]
        if view.mask is not None:
            checks.append(_check_mask(scene, where, view.mask))
        if view.depth is not None:
            checks.append(_check_depth(scene, where, view.depth))
        problems += [c for c in checks if c]
    return problems
