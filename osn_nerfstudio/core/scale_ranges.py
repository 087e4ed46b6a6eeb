"""Scene depth bounds and per-object scale ranges from keypoint depths (docs/dataparser.md).

Pure torch, no nerfstudio import. Scales are relative to the background (object 0, scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class SceneBounds:
    """Depth interval, in background units, that every object must stay inside."""

    near: float
    far: float


def robust_depth_interval(depths: Float[Tensor, "n"], quantile: float) -> tuple[float, float]:
    """(low, high) quantiles of a set of depths, ignoring the ``quantile`` tails on each side."""
    if depths.numel() == 0:
        raise ValueError("cannot bound the depth of an object without keypoints")
    q = torch.tensor([quantile, 1.0 - quantile], dtype=depths.dtype)
    low, high = torch.quantile(depths, q).tolist()
    return low, high


def scene_bounds(
    background_depths: Float[Tensor, "n"], quantile: float, far_margin: float, near_fraction: float
) -> SceneBounds:
    """Far bound just beyond the background's farthest keypoints; near bound a fixed fraction of it.

    The background is what every ray ends on, so its keypoints bound how deep the scene reaches; nothing
    observed bounds how close to the camera an object may come, hence a fraction of the far bound.
    """
    _, high = robust_depth_interval(background_depths, quantile)
    far = high * (1.0 + far_margin)
    return SceneBounds(near=near_fraction * far, far=far)


def scale_ranges(
    keypoint_object: Int[Tensor, "n"],
    keypoint_depth: Float[Tensor, "n"],
    num_objects: int,
    bounds: SceneBounds,
    quantile: float,
) -> Float[Tensor, "num_objects 2"]:
    """Per-object [lo, hi] scale: the scales at which the object's keypoints stay inside ``bounds``.

    At scale s an object's keypoint of own-unit depth d sits at depth s*d, so the object's nearest
    keypoint reaches ``near`` at lo = near / d_min and its farthest reaches ``far`` at hi = far / d_max.
    Row 0 (the background) is [1, 1].
    """
    ranges = torch.ones(num_objects, 2, dtype=torch.float64)
    for k in range(1, num_objects):
        low, high = robust_depth_interval(keypoint_depth[keypoint_object == k].double(), quantile)
        lo, hi = bounds.near / low, bounds.far / high
        if not lo < hi:
            raise ValueError(
                f"object {k}: its keypoint depths span {low:.4g}..{high:.4g} of its own units, a ratio of "
                f"{high / low:.3g}, wider than the scene's depth range {bounds.near:.4g}..{bounds.far:.4g} allows; "
                "lower near_fraction or check this object's keypoint depths."
            )
        ranges[k] = torch.tensor([lo, hi], dtype=torch.float64)
    return ranges
