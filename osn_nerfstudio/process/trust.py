"""Whether an object's registration can be trusted, from signals that need no ground truth.

COLMAP reports a small reprojection error for a wrong but self-consistent reconstruction, so the error
alone flags nothing. On the default demo (128x96) the sphere and the cylinder registered in 10 and 12
frames out of the 37 and 35 where they are visible, with rotations 27 and 32 degrees off on average
even after the best rotation alignment; their tracks die after a step or two (about 17 % of a small
striped object's points survive a frame step, against 83 % of the box's), so what registers is a short
arc built from a few short, biased tracks. An object registered in under half of the frames where it is
visible, or with few observations per registered frame, is reported as untrusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from osn_nerfstudio.process.sfm import ObjectSfM


@dataclass
class TrustConfig:
    """When a foreground object's registration is not trusted (see docs/process-data.md)."""

    min_coverage: float = 0.5
    """Registered frames needed, as a fraction of the frames where the object's mask has pixels."""
    min_frame_observations: int = 60
    """Median keypoints (observations of 3D points) a registered frame needs."""
    keep_untrusted: bool = False
    """Keep untrusted objects in the scene (with a warning) instead of leaving them out."""


@dataclass
class TrustSignals:
    """What the check measured for one object."""

    registered_frames: int
    visible_frames: int
    median_frame_observations: float

    @property
    def coverage(self) -> float:
        return self.registered_frames / max(self.visible_frames, 1)


def trust_signals(sfm: ObjectSfM, visible: np.ndarray) -> TrustSignals:
    """Signals of a reconstruction whose object is visible (mask has pixels) in frames ``visible`` [F] bool."""
    registered = np.flatnonzero(sfm.registered)
    counts = np.bincount(sfm.keypoint_frame, minlength=sfm.registered.shape[0])[registered]
    return TrustSignals(
        registered_frames=int(registered.size),
        visible_frames=int(np.count_nonzero(visible | sfm.registered)),
        median_frame_observations=float(np.median(counts)) if counts.size else 0.0,
    )


def untrusted_reason(signals: TrustSignals, config: TrustConfig) -> Optional[str]:
    """Why the registration cannot be trusted, or None when it passes every check."""
    reasons: List[str] = []
    if signals.coverage < config.min_coverage:
        reasons.append(
            f"registered in only {signals.registered_frames} of the {signals.visible_frames} frames "
            f"where it is visible ({100 * signals.coverage:.0f} %, at least {100 * config.min_coverage:.0f} % needed)"
        )
    if signals.median_frame_observations < config.min_frame_observations:
        reasons.append(
            f"only {signals.median_frame_observations:.0f} keypoints per registered frame (median; at least "
            f"{config.min_frame_observations} needed)"
        )
    if not reasons:
        return None
    return (
        "untrusted registration: " + "; ".join(reasons) + ". Its tracks are too short or too few for a reliable pose "
        "(a wrong reconstruction can still have a small reprojection error): give larger frames or more texture"
    )
