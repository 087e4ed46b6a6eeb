"""How far processed poses and keypoint depths are from a ground truth, or from another reconstruction, and the
truth's evaluation carried onto a processed scene.

Structure from motion recovers each object only up to a similarity (rotation, translation, scale), so
trajectories are compared after the best similarity alignment, and depths after the best scale.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Tuple

import numpy as np

from osn_nerfstudio.data.scene_format import (
    Evaluation,
    Keypoints,
    Scene,
    TestView,
    read_amodal_depth,
    read_depth,
    read_mask,
    write_amodal_depth,
    write_depth,
    write_mask,
    write_scene_metadata,
)


def similarity_alignment(source: np.ndarray, target: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum |s R source_i + t - target_i|^2 over [N, 3] point pairs (Umeyama, 1991)."""
    mean_source, mean_target = source.mean(axis=0), target.mean(axis=0)
    a, b = source - mean_source, target - mean_target
    u, singular, vt = np.linalg.svd(b.T @ a / len(source))
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ flip @ vt
    scale = float(np.trace(np.diag(singular) @ flip) / (a**2).sum(axis=1).mean())
    return scale, rotation, mean_target - scale * rotation @ mean_source


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """Angle (degrees) of [..., 3, 3] rotations."""
    cosine = (np.trace(rotation, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def rotation_alignment(estimated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The [3, 3] rotation A minimising sum |reference_v - A estimated_v|^2 over [F, 3, 3] rotations."""
    correlation = np.einsum("fij,fkj->ik", reference, estimated)
    u, _, vt = np.linalg.svd(correlation)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def rotation_disagreement_deg(estimated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[F] angles (degrees) between [F, 3, 3] rotations after the one rotation A minimising
    sum |reference_v - A estimated_v|^2 (both sets of camera-to-object rotations may sit in different object frames).
    """
    return rotation_angle_deg(np.swapaxes(reference, -1, -2) @ rotation_alignment(estimated, reference) @ estimated)


@dataclass
class TrajectoryError:
    """A recovered camera-to-object trajectory against the truth, after similarity alignment."""

    rotation_deg_mean: float
    rotation_deg_max: float
    translation_relative_mean: float
    """Mean camera-centre error divided by the RMS spread of the true camera centres about their mean."""
    translation_relative_max: float
    rotation_deg_median: float
    centre_error_median: float
    """Median camera-centre error in the truth's units."""
    num_frames: int


def trajectory_error(estimated: np.ndarray, truth: np.ndarray) -> TrajectoryError:
    """Compare [F, 4, 4] camera-to-object poses (the frames both know) after the best similarity."""
    scale, rotation, translation = similarity_alignment(estimated[:, :3, 3], truth[:, :3, 3])
    centres = scale * estimated[:, :3, 3] @ rotation.T + translation
    spread = np.sqrt(((truth[:, :3, 3] - truth[:, :3, 3].mean(axis=0)) ** 2).sum(axis=1).mean())
    distance = np.linalg.norm(centres - truth[:, :3, 3], axis=1) / spread
    angles = rotation_angle_deg(np.swapaxes(truth[:, :3, :3], -1, -2) @ rotation @ estimated[:, :3, :3])
    return TrajectoryError(
        rotation_deg_mean=float(angles.mean()),
        rotation_deg_max=float(angles.max()),
        translation_relative_mean=float(distance.mean()),
        translation_relative_max=float(distance.max()),
        rotation_deg_median=float(np.median(angles)),
        centre_error_median=float(np.median(distance) * spread),
        num_frames=int(len(estimated)),
    )


@dataclass
class DepthAgreement:
    """Keypoint depths against true depths after the best single scale (median of the ratios)."""

    scale: float
    relative_error_median: float
    relative_error_p90: float
    num_keypoints: int


def depth_agreement(estimated: np.ndarray, truth: np.ndarray) -> DepthAgreement:
    """Compare [N] estimated depths with [N] true depths up to one scale factor."""
    scale = float(np.median(truth / estimated))
    error = np.abs(scale * estimated - truth) / truth
    return DepthAgreement(
        scale=scale,
        relative_error_median=float(np.median(error)),
        relative_error_p90=float(np.percentile(error, 90)),
        num_keypoints=int(len(estimated)),
    )


def depth_ratio_spread(estimated: np.ndarray, truth: np.ndarray) -> float:
    """Interquartile range over median of the [N] ratios estimated / true depth.

    A correct reconstruction has one unit, so a constant ratio (spread 0); a warped one does not.
    """
    ratio = estimated / truth
    low, median, high = np.percentile(ratio, [25, 50, 75])
    return float((high - low) / median)


def _anchored(view: TestView, truth: Scene, processed: Scene, anchors: np.ndarray, scale: float) -> np.ndarray:
    """A test view's camera-to-background pose moved into the processed background: kept where it is relative to the
    training camera nearest in time (among the frames ``anchors``), the offset divided by the unit ``scale``. A
    reconstruction a little bent over the video still shows each test view what its neighbouring frame shows; one
    similarity for the whole path would turn it by the bend."""
    v = anchors[np.argmin(np.abs(truth.times[anchors] - view.time))]
    relative = np.linalg.inv(truth.camera_to_object[0][v]) @ view.camera_to_background
    relative[:3, 3] /= scale
    return processed.camera_to_object[0][v] @ relative


def truth_depth_at_keypoints(
    keypoints: Keypoints, depth: np.ndarray, labels: np.ndarray, label: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Which of ``keypoints`` lie on pixels the truth labels ``label`` ([N] bool; ``labels`` [F, H, W]), and the
    truth's depth ([F, H, W] ``depth``) at those pixels ([M])."""
    col = np.clip(np.floor(keypoints.uv[:, 0]).astype(int), 0, depth.shape[2] - 1)
    row = np.clip(np.floor(keypoints.uv[:, 1]).astype(int), 0, depth.shape[1] - 1)
    on_object = labels[keypoints.frame, row, col] == label
    return on_object, depth[keypoints.frame, row, col][on_object]


def depth_units(processed: Scene, truth: Scene) -> np.ndarray:
    """[K] for each object of ``processed``, the truth's background units per unit of its own: the median of the
    truth's depth map over the object's keypoint depth, at its keypoints whose pixel the truth labels as the same
    object (matched by name). Independent of the object's rotations, which a wrong registration gets wrong."""
    depth = np.stack([read_depth(truth.path(frame.depth)) for frame in truth.frames])
    labels = np.stack([truth.load_mask(v) for v in range(truth.num_frames)])
    names = [o.name for o in truth.objects]
    units = []
    for k, obj in enumerate(processed.objects):
        keypoints = processed.keypoints.select(processed.keypoints.object_id == k)
        on_object, true_depth = truth_depth_at_keypoints(keypoints, depth, labels, names.index(obj.name))
        if not on_object.any():
            raise ValueError(f"{processed.root}: no keypoint of '{obj.name}' lies on it in the truth's masks.")
        units.append(float(np.median(true_depth / keypoints.depth[on_object])))
    return np.array(units)


def transfer_evaluation(processed: Scene, truth: Scene) -> Scene:
    """``processed`` (an ``osn-process-data`` result of ``truth``'s frames) with ``truth``'s evaluation carried into its
    own frames and units, written into its directory: the test views, each object's true relative scale and the
    amodal depth, so that a run trained on the processed scene is scored on the same test views as one trained on
    the truth.

    Units come from :func:`depth_units` (the truth needs per-frame depth maps): each test view keeps its pose
    relative to the training camera nearest in time, its offset in the processed background's unit; an object's
    relative scale is its unit over the background's, both in the truth's background units (a wrong rotation does not
    change it; a similarity of camera centres would). Test-view and amodal depths are divided by the background's
    unit; labels of objects the processed scene left out become its ignore label. Raises ``ValueError`` when the two
    scenes do not share their frames (times) and image size, when the truth has no depth maps, or when the processed
    scene already has an evaluation.
    """
    if truth.evaluation is None or truth.evaluation.relative_scales is None:
        raise ValueError(f"{truth.root}: the truth has no evaluation with relative scales to carry over.")
    same_size = (processed.camera.width, processed.camera.height) == (truth.camera.width, truth.camera.height)
    if not same_size or not np.allclose(processed.times, truth.times):
        raise ValueError(f"{processed.root}: its frames and image size must be the truth's ({truth.root}).")
    if processed.evaluation is not None:
        raise ValueError(f"{processed.root}: the scene already has an evaluation; it is not overwritten.")
    if any(frame.depth is None for frame in truth.frames):
        raise ValueError(f"{truth.root}: the truth needs a depth map for every frame to carry its units over.")
    units = depth_units(processed, truth)
    processed.path("evaluation").mkdir(exist_ok=True)
    names = [o.name for o in truth.objects]
    index = [names.index(o.name) for o in processed.objects]  # truth index of each processed object
    background_scale = units[0]
    relabel = np.full(1 << 16, processed.mask_ignore_label)  # masks hold 8- or 16-bit labels
    relabel[index] = np.arange(len(index))
    anchors = np.flatnonzero(processed.registered[0] & truth.registered[0])
    views = []
    for i, view in enumerate(truth.evaluation.test_views):
        pose = _anchored(view, truth, processed, anchors, background_scale)
        stem = f"evaluation/test_{i:03d}"
        image = f"{stem}{Path(view.image).suffix}"
        shutil.copyfile(truth.path(view.image), processed.path(image))
        moved = TestView(image=image, time=view.time, camera_to_background=pose)
        if view.mask is not None:
            moved.mask = f"{stem}_mask.png"
            write_mask(processed.path(moved.mask), relabel[read_mask(truth.path(view.mask))])
        if view.depth is not None:
            moved.depth = f"{stem}_depth.npy"
            write_depth(processed.path(moved.depth), read_depth(truth.path(view.depth)) / background_scale)
        if view.covisibility is not None:
            moved.covisibility = f"{stem}_covisibility{Path(view.covisibility).suffix}"
            shutil.copyfile(truth.path(view.covisibility), processed.path(moved.covisibility))
        views.append(moved)
    relative = units / background_scale
    evaluation = Evaluation(test_views=views, relative_scales=relative)
    if truth.evaluation.amodal_depth is not None:
        evaluation.amodal_depth = "evaluation/amodal_depth.npy"
        amodal = read_amodal_depth(truth.path(truth.evaluation.amodal_depth))
        write_amodal_depth(processed.path(evaluation.amodal_depth), amodal[index] / background_scale)
    result = replace(processed, evaluation=evaluation)
    write_scene_metadata(result)
    return result
