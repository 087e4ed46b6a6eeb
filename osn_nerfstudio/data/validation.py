"""Every rule an OSN scene must satisfy, each check naming the file, frame or object at fault.

``load_scene`` is the one entry point the rest of the package uses: a scene that passes it has
consistent shapes, rigid finite poses, keypoints inside the image and in registered frames, and
mask labels that name objects, so training can rely on all of that without re-checking.
``docs/scene-format.md`` lists the same rules for users.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from osn_nerfstudio.data.scene_format import (
    IMAGE_READ_ERRORS,
    KEYPOINTS_FILE,
    POSES_FILE,
    SCENE_FILE,
    Scene,
    SceneFormatError,
    read_amodal_depth,
    read_depth,
    read_mask,
    read_scene,
)

RIGIDITY_TOLERANCE = 1e-3
"""Largest accepted |R^T R - I| entry, |det R - 1| and bottom-row deviation of a pose."""
MAX_LISTED_PROBLEMS = 20
MAX_LABEL = 65535
"""Largest value a 16-bit mask can hold."""


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
    """Raise ``SceneValidationError`` listing every rule ``scene`` breaks.

    ``check_files`` also opens every image, mask and depth map (slower; each file is decoded once).
    """
    problems: List[str] = []
    problems += _check_camera(scene)
    problems += _check_frames(scene)
    problems += _check_objects(scene)
    problems += _check_poses(scene)
    problems += _check_keypoints(scene)
    problems += _check_evaluation(scene)
    if check_files:
        problems += _check_frame_files(scene)
        problems += _check_test_view_files(scene)
    if problems:
        raise SceneValidationError(scene.root, problems)


def object_label(scene: Scene, k: int) -> str:
    return f"object {k} '{scene.objects[k].name}'" if 0 <= k < scene.num_objects else f"object {k}"


def _indices(values: Sequence[int], limit: int = 10) -> str:
    """``[1, 4, 7]``, shortened to the first ``limit`` with the total when longer."""
    values = [int(v) for v in values]
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ...] ({len(values)} in all)"


def _check_camera(scene: Scene) -> List[str]:
    cam = scene.camera
    problems = []
    if cam.width <= 0 or cam.height <= 0:
        problems.append(f"{SCENE_FILE}: camera size {cam.width}x{cam.height} must be positive.")
    if not (np.isfinite(cam.fx) and np.isfinite(cam.fy) and cam.fx > 0 and cam.fy > 0):
        problems.append(f"{SCENE_FILE}: camera focal lengths fx={cam.fx}, fy={cam.fy} must be finite and positive.")
    if not (np.isfinite(cam.cx) and np.isfinite(cam.cy)):
        problems.append(f"{SCENE_FILE}: camera principal point cx={cam.cx}, cy={cam.cy} must be finite.")
    return problems


def _check_frames(scene: Scene) -> List[str]:
    if scene.num_frames == 0:
        return [f"{SCENE_FILE}: the scene has no frames."]
    times = scene.times
    problems = []
    if not np.all(np.isfinite(times)):
        bad = int(np.flatnonzero(~np.isfinite(times))[0])
        problems.append(f"{SCENE_FILE}: frame {bad} ({scene.frames[bad].image}): time {times[bad]} is not finite.")
    else:
        bad = np.flatnonzero(np.diff(times) <= 0) + 1
        if bad.size:
            v = int(bad[0])
            also = f" (frames {_indices(bad)} in all)" if bad.size > 1 else ""
            problems.append(
                f"{SCENE_FILE}: frame {v} ({scene.frames[v].image}): time {times[v]} is not after frame "
                f"{v - 1}'s time {times[v - 1]}{also}; frame times must strictly increase."
            )
    return problems


def _check_objects(scene: Scene) -> List[str]:
    if scene.num_objects == 0:
        return [f"{SCENE_FILE}: the scene has no objects; object 0 must be the background."]
    problems = []
    names = [o.name for o in scene.objects]
    for k, obj in enumerate(scene.objects):
        same = [j for j, name in enumerate(names) if name == obj.name]
        if len(same) > 1 and same[0] == k:
            problems.append(f"{SCENE_FILE}: object name '{obj.name}' is used by objects {same}; names must be unique.")
        lo, hi = obj.bbox_min, obj.bbox_max
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            problems.append(
                f"{SCENE_FILE}: {object_label(scene, k)}: bounding box corners must be 3 finite numbers each, "
                f"found bbox_min {lo.tolist()} and bbox_max {hi.tolist()}."
            )
        elif np.any(hi <= lo):
            axes = [a for a, bad in zip("xyz", hi <= lo) if bad]
            problems.append(
                f"{SCENE_FILE}: {object_label(scene, k)}: bounding box max {hi.tolist()} is not above min "
                f"{lo.tolist()} along {', '.join(axes)}."
            )
    label = scene.mask_ignore_label
    if 0 <= label < scene.num_objects:
        problems.append(
            f"{SCENE_FILE}: mask_ignore_label {label} collides with {object_label(scene, label)}; "
            f"use a value from {scene.num_objects} to {MAX_LABEL} (255 by default)."
        )
    elif not 0 <= label <= MAX_LABEL:
        problems.append(f"{SCENE_FILE}: mask_ignore_label {label} does not fit a 16-bit mask (0..{MAX_LABEL}).")
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
            f"expected [{K}, {F}, 4, 4] and [{K}, {F}] for the {K} objects and {F} frames in {SCENE_FILE}."
        ]
    problems = []
    for k in range(K):
        frames = np.flatnonzero(registered[k])
        if frames.size == 0:
            problems.append(
                f"{POSES_FILE}: {object_label(scene, k)} is not registered in any frame; "
                "register it in at least one frame or remove it."
            )
            continue
        if k == 0 and frames.size < F:
            problems.append(
                f"{POSES_FILE}: the background ({object_label(scene, 0)}) must be registered in every frame; "
                f"it is not registered in frame(s) {_indices(np.flatnonzero(~registered[0]))}."
            )
        finite = np.isfinite(poses[k, frames]).all(axis=(1, 2))
        if not finite.all():
            problems.append(
                f"{POSES_FILE}: {object_label(scene, k)}: pose has non-finite entries in registered "
                f"frame(s) {_indices(frames[~finite])}."
            )
        errors = np.array([rigidity_error(poses[k, v]) for v in frames[finite]])
        rigid = errors <= RIGIDITY_TOLERANCE
        if not rigid.all():
            bad, worst = frames[finite][~rigid], int(np.argmax(errors))
            problems.append(
                f"{POSES_FILE}: {object_label(scene, k)}: pose is not rigid in frame(s) {_indices(bad)} "
                f"(largest error {errors[worst]:.3g}, frame {frames[finite][worst]}); expected a rotation "
                "(orthonormal, determinant +1: no scale, shear or reflection) and bottom row [0, 0, 0, 1]."
            )
    return problems


def _check_keypoints(scene: Scene) -> List[str]:
    kp = scene.keypoints
    if kp.object_id.ndim != 1:
        return [f"{KEYPOINTS_FILE}: object_id must have shape [N], found {list(kp.object_id.shape)}."]
    n = len(kp)
    shapes = {"frame": kp.frame.shape, "uv": kp.uv.shape, "depth": kp.depth.shape, "weight": kp.weight.shape}
    expected = {"frame": (n,), "uv": (n, 2), "depth": (n,), "weight": (n,)}
    wrong = [f"{k} has {list(v)}" for k, v in shapes.items() if v != expected[k]]
    if wrong:
        return [
            f"{KEYPOINTS_FILE}: arrays disagree with object_id [{n}]: {', '.join(wrong)}; "
            f"expected frame [{n}], uv [{n}, 2], depth [{n}], weight [{n}]."
        ]
    K, F = scene.num_objects, scene.num_frames
    problems = []

    def report(rows: np.ndarray, what: str) -> None:
        if rows.size:
            i = int(rows[0])
            problems.append(
                f"{KEYPOINTS_FILE}: {rows.size} keypoint(s) {what}; first is row {i} "
                f"({object_label(scene, int(kp.object_id[i]))}, frame {int(kp.frame[i])}, "
                f"uv {kp.uv[i].tolist()}, depth {kp.depth[i]:.6g}, weight {kp.weight[i]:.6g})."
            )

    report(np.flatnonzero((kp.object_id < 0) | (kp.object_id >= K)), f"name an object outside 0..{K - 1}")
    report(np.flatnonzero((kp.frame < 0) | (kp.frame >= F)), f"name a frame outside 0..{F - 1}")
    if problems:
        return problems
    W, H = scene.camera.width, scene.camera.height
    u, v = kp.uv[:, 0], kp.uv[:, 1]
    inside = np.isfinite(u) & np.isfinite(v) & (u >= 0) & (v >= 0) & (u <= W) & (v <= H)
    report(np.flatnonzero(~inside), f"lie outside the {W}x{H} image (0 <= u <= {W}, 0 <= v <= {H})")
    report(np.flatnonzero(~(np.isfinite(kp.depth) & (kp.depth > 0))), "have a depth that is not finite and positive")
    report(
        np.flatnonzero(~(np.isfinite(kp.weight) & (kp.weight > 0) & (kp.weight <= 1))), "have a weight outside (0, 1]"
    )
    if scene.registered.shape == (K, F):
        report(
            np.flatnonzero(~scene.registered[kp.object_id, kp.frame]),
            "lie in frames where their object is not registered",
        )
    counts = np.bincount(kp.object_id, minlength=K)
    for k in np.flatnonzero(counts == 0):
        why = "the scene's depth range" if k == 0 else "its scale range"
        problems.append(f"{KEYPOINTS_FILE}: {object_label(scene, int(k))} has no keypoints; {why} cannot be derived.")
    return problems


def _check_evaluation(scene: Scene) -> List[str]:
    ev = scene.evaluation
    if ev is None:
        return []
    problems = []
    if ev.relative_scales is not None:
        s = ev.relative_scales
        if s.shape != (scene.num_objects,):
            problems.append(
                f"{SCENE_FILE}: evaluation.relative_scales has {s.size} entries for {scene.num_objects} objects; "
                "give one scale per object."
            )
        elif not np.all(np.isfinite(s)) or np.any(s <= 0):
            problems.append(f"{SCENE_FILE}: evaluation.relative_scales {s.tolist()} must all be finite and positive.")
        elif abs(s[0] - 1.0) > 1e-9:
            problems.append(
                f"{SCENE_FILE}: evaluation.relative_scales entry 0 (the background) is {s[0]}; it must be 1 "
                "(the background's scale defines the units)."
            )
    times = scene.times
    known_span = times.size > 0 and np.all(np.isfinite(times))  # else the frame rules already complain
    for i, view in enumerate(ev.test_views):
        where = f"{SCENE_FILE}: evaluation.test_views[{i}] ({view.image})"
        pose = view.camera_to_background
        if pose.shape != (4, 4):
            problems.append(f"{where}: camera_to_background has shape {list(pose.shape)}, expected a 4x4 matrix.")
        elif not np.all(np.isfinite(pose)) or (err := rigidity_error(pose)) > RIGIDITY_TOLERANCE:
            detail = "has non-finite entries" if not np.all(np.isfinite(pose)) else f"is not rigid (error {err:.3g})"
            problems.append(f"{where}: camera_to_background {detail}.")
        if known_span and not (times.min() <= view.time <= times.max()):
            problems.append(f"{where}: time {view.time} is outside the video's [{times.min()}, {times.max()}].")
    return problems


def _image_problem(path: Path) -> Optional[str]:
    """Why the file cannot be decoded as an image, or None. Decodes fully to catch truncated files."""
    try:
        with Image.open(path) as image:
            image.load()
    except IMAGE_READ_ERRORS as err:
        return str(err) or type(err).__name__
    return None


def _check_image(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: image file {relative} is missing."
    problem = _image_problem(path)
    if problem is not None:
        return f"{where}: image file {relative} cannot be read as an image ({problem})."
    with Image.open(path) as image:
        size = image.size
    if size != (scene.camera.width, scene.camera.height):
        return (
            f"{where}: image {relative} is {size[0]}x{size[1]} "
            f"but the camera is {scene.camera.width}x{scene.camera.height}."
        )
    return None


def _check_mask(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: mask file {relative} is missing."
    try:
        labels = read_mask(path)
    except SceneFormatError as err:
        return f"{where}: mask {relative}: {str(err).removeprefix(f'{path}: ')}"
    if labels.shape != (scene.camera.height, scene.camera.width):
        return (
            f"{where}: mask {relative} is {labels.shape[1]}x{labels.shape[0]} "
            f"but the camera is {scene.camera.width}x{scene.camera.height}."
        )
    values = np.unique(labels)
    unknown = values[((values < 0) | (values >= scene.num_objects)) & (values != scene.mask_ignore_label)]
    if unknown.size:
        return (
            f"{where}: mask {relative} has label(s) {_indices(unknown)} that name no object "
            f"(objects are 0..{scene.num_objects - 1}, ignore label {scene.mask_ignore_label})."
        )
    return None


def _check_covisibility(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: co-visibility mask {relative} is missing."
    try:
        mask = read_mask(path)
    except SceneFormatError as err:
        return f"{where}: co-visibility mask {relative}: {str(err).removeprefix(f'{path}: ')}"
    if mask.shape != (scene.camera.height, scene.camera.width):
        return (
            f"{where}: co-visibility mask {relative} is {mask.shape[1]}x{mask.shape[0]} "
            f"but the camera is {scene.camera.width}x{scene.camera.height}."
        )
    return None


def _check_depth(scene: Scene, where: str, relative: str) -> Optional[str]:
    path = scene.path(relative)
    if not path.is_file():
        return f"{where}: depth file {relative} is missing."
    try:
        depth = read_depth(path)
    except SceneFormatError as err:
        return f"{where}: depth {relative}: {str(err).removeprefix(f'{path}: ')}"
    if depth.shape != (scene.camera.height, scene.camera.width):
        return (
            f"{where}: depth {relative} has shape {list(depth.shape)}, "
            f"expected [{scene.camera.height}, {scene.camera.width}] (height, width)."
        )
    if np.any(np.isnan(depth)) or np.any(depth < 0):
        return f"{where}: depth {relative} has NaN or negative values (use 0 or inf for pixels without depth)."
    return None


def _check_amodal_depth(scene: Scene, relative: str) -> Optional[str]:
    where, path = f"{SCENE_FILE}: evaluation.amodal_depth", scene.path(relative)
    if not path.is_file():
        return f"{where}: file {relative} is missing."
    try:
        depth = read_amodal_depth(path)
    except SceneFormatError as err:
        return f"{where}: {str(err).removeprefix(f'{path}: ')}"
    expected = (scene.num_objects, scene.num_frames, scene.camera.height, scene.camera.width)
    if depth.shape != expected:
        return (
            f"{where}: {relative} has shape {list(depth.shape)}, "
            f"expected {list(expected)} (objects, frames, height, width)."
        )
    if np.isnan(depth).any() or (depth < 0).any():
        return f"{where}: {relative} has NaN or negative values (use inf where an object does not cover a pixel)."
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
    if scene.evaluation.amodal_depth is not None:
        problems += [p for p in [_check_amodal_depth(scene, scene.evaluation.amodal_depth)] if p]
    for i, view in enumerate(scene.evaluation.test_views):
        where = f"evaluation.test_views[{i}]"
        checks = [_check_image(scene, where, view.image)]
        if view.mask is not None:
            checks.append(_check_mask(scene, where, view.mask))
        if view.depth is not None:
            checks.append(_check_depth(scene, where, view.depth))
        if view.covisibility is not None:
            checks.append(_check_covisibility(scene, where, view.covisibility))
        problems += [c for c in checks if c]
    return problems
