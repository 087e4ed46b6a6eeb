"""How far processed poses and keypoint depths are from a ground truth, or from another reconstruction.

Structure from motion recovers each object only up to a similarity (rotation, translation, scale), so
trajectories are compared after the best similarity alignment, and depths after the best scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


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


def rotation_disagreement_deg(estimated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[F] angles (degrees) between [F, 3, 3] rotations after the one rotation A minimising
    sum |reference_v - A estimated_v|^2 (both sets of camera-to-object rotations may sit in different object frames).
    """
    correlation = np.einsum("fij,fkj->ik", reference, estimated)
    u, _, vt = np.linalg.svd(correlation)
    align = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return rotation_angle_deg(np.swapaxes(reference, -1, -2) @ align @ estimated)


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
