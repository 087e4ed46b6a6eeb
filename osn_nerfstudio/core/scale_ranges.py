"""Scene depth bounds and per-object scale ranges from keypoint depths (docs/dataparser.md), the normalised
log-scale that the scale network reads, and distances between configurations.

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


def robust_depth_interval(depths: Float[Tensor, " n"], quantile: float) -> tuple[float, float]:
    """(low, high) quantiles of a set of depths, ignoring the ``quantile`` tails on each side."""
    if depths.numel() == 0:
        raise ValueError("cannot bound the depth of an object without keypoints")
    q = torch.tensor([quantile, 1.0 - quantile], dtype=depths.dtype)
    low, high = torch.quantile(depths, q).tolist()
    return low, high


def scene_bounds(
    background_depths: Float[Tensor, " n"], quantile: float, far_margin: float, near_fraction: float
) -> SceneBounds:
    """Far bound just beyond the background's farthest keypoints; near bound a fixed fraction of it.

    The background is what every ray ends on, so its keypoints bound how deep the scene reaches; nothing
    observed bounds how close to the camera an object may come, hence a fraction of the far bound.
    """
    _, high = robust_depth_interval(background_depths, quantile)
    far = high * (1.0 + far_margin)
    return SceneBounds(near=near_fraction * far, far=far)


def scale_ranges(
    keypoint_object: Int[Tensor, " n"],
    keypoint_depth: Float[Tensor, " n"],
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


class ScaleRanges:
    """Log-space normalisation between scales ``[..., K]`` and the network's input ``u`` in [0, 1]^(K-1)."""

    def __init__(self, scale_range: Float[Tensor, "K 2"]) -> None:
        if scale_range.ndim != 2 or scale_range.shape[1] != 2 or scale_range.shape[0] < 1:
            raise ValueError(f"scale_range must be [K, 2] with K >= 1, got {tuple(scale_range.shape)}.")
        if not torch.allclose(scale_range[0], torch.ones_like(scale_range[0])):
            raise ValueError(f"scale_range row 0 (the background) must be [1, 1], got {scale_range[0].tolist()}.")
        low, high = scale_range[1:, 0], scale_range[1:, 1]
        bad = ((low <= 0) | ~(high > low)).nonzero()[:, 0]
        if len(bad):
            k = int(bad[0]) + 1
            lo, hi = scale_range[k].tolist()
            raise ValueError(
                f"object {k}: scale range [{lo:.4g}, {hi:.4g}] must satisfy 0 < lo < hi; "
                "check the scene's scale ranges (docs/dataparser.md)."
            )
        self.scale_range = scale_range
        self.log_low = low.log()
        self.log_span = high.log() - self.log_low

    @property
    def num_objects(self) -> int:
        return self.scale_range.shape[0]

    def normalise(self, scales: Float[Tensor, "*bs K"]) -> Float[Tensor, "*bs Km1"]:
        """``u_k = (log s_k - log lo_k) / (log hi_k - log lo_k)`` for the foreground objects k >= 1."""
        log_low, log_span = self.log_low.to(scales), self.log_span.to(scales)
        return (scales[..., 1:].log() - log_low) / log_span

    def denormalise(self, u: Float[Tensor, "*bs Km1"]) -> Float[Tensor, "*bs K"]:
        """Scales from normalised log-scales; the background's scale is 1."""
        log_low, log_span = self.log_low.to(u), self.log_span.to(u)
        foreground = torch.exp(log_low + u * log_span)
        return torch.cat([u.new_ones(*u.shape[:-1], 1), foreground], dim=-1)


def closest_configuration(candidates: Float[Tensor, "C K"], target: Float[Tensor, " K"]) -> tuple[int, float]:
    """Index of the candidate closest to ``target`` in log space (the largest log-ratio of one object's scales), and
    that distance: scales are multiplicative, so halving and doubling are equally far."""
    gap = (candidates.log() - target.to(candidates).log()).abs().amax(-1)
    index = int(gap.argmin())
    return index, float(gap[index])
