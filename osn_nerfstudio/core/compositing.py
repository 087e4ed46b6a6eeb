"""Scaled composite rendering of K objects along each ray, and rendering each object by itself.

Pure torch, no nerfstudio import. Each object contributes N samples per ray in its own units: intervals
[starts, ends] of τ along its object-space ray (see ``geometry.rays_in_objects``). A sample's opacity comes
from its interval in object units, so an object looks the same at every scale (docs/method.md); only where
its samples sit in the composite, at scene distance ``t = s_k · τ``, depends on the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

MIN_ACCUMULATION_FOR_DEPTH = 1e-4
"""An object more transparent than this on a ray gets depth 0 there when rendered alone."""


@dataclass
class ObjectSamples:
    """Samples of every object along every ray, each object in its own units.

    All fields must be finite: samples of an object a ray misses, or of an absent object, carry density 0
    and any finite interval (e.g. [0, 0], as ``intersect_aabb`` gives for misses).
    """

    starts: Float[Tensor, "R K N"]
    """Start of each sample's interval along the object's ray, in object units."""
    ends: Float[Tensor, "R K N"]
    """End of each sample's interval, in object units."""
    density: Float[Tensor, "R K N"]
    """Volume density per object unit of length; 0 where the object is missed or absent."""
    rgb: Float[Tensor, "R K N 3"]
    """Colour of each sample."""

    @property
    def midpoints(self) -> Float[Tensor, "R K N"]:
        """Distance of each sample along its object's ray, in object units."""
        return (self.starts + self.ends) / 2


@dataclass
class CompositeOutputs:
    """Per-ray outputs of scaled composite rendering; distances in scene (background) units."""

    rgb: Float[Tensor, "R 3"]
    """Composited colour, plus (1 - accumulation) · background colour when one is given."""
    depth: Float[Tensor, "R 1"]
    """Expected scene distance, normalised by accumulation and clipped to the ray's sample range (nerfstudio's
    "expected" depth)."""
    accumulation: Float[Tensor, "R 1"]
    """Total opacity of the ray."""
    object_weights: Float[Tensor, "R K"]
    """Sum of each object's sample weights: a soft segmentation that sums to ``accumulation``."""
    weights: Float[Tensor, "R K N"]
    """Weight of every sample in the composite, in its (object, sample) slot."""


@dataclass
class AloneOutputs:
    """Per-ray outputs of every object rendered by itself (no scale, no other objects), in object units."""

    rgb: Float[Tensor, "R K 3"]
    """Colour of each object alone, without background colour."""
    depth: Float[Tensor, "R K"]
    """Expected distance in the object's own units, normalised by its accumulation; 0 where that is below
    ``MIN_ACCUMULATION_FOR_DEPTH``."""
    accumulation: Float[Tensor, "R K"]
    """Opacity of each object alone."""
    weights: Float[Tensor, "R K N"]
    """Weight of every sample when its object is rendered alone."""


def optical_thickness(samples: ObjectSamples) -> Float[Tensor, "R K N"]:
    """σ·δ of each sample, with δ the interval length in object units (so it does not depend on scale)."""
    # trained runs showed rare reversed intervals from the PDF sampler: -σδ would overflow exp() to inf
    return samples.density * (samples.ends - samples.starts).clamp_min(0.0)


def sample_alphas(samples: ObjectSamples) -> Float[Tensor, "R K N"]:
    """Opacity 1 - exp(-σ·δ) of each sample, δ in object units."""
    # expm1 keeps precision for nearly transparent samples
    return -torch.expm1(-optical_thickness(samples))


def weights_along_rays(thickness: Float[Tensor, "*bs M"]) -> Float[Tensor, "*bs M"]:
    """Volume rendering weights α_i·T_i of samples listed in ray order along the last dimension.

    The transmittance T_i = exp(-Σ_{j<i} σ_j δ_j) is an exclusive cumulative sum in log space, which stays
    accurate where a product of many (1 - α) would underflow. The sum is shifted, never computed as
    ``cumsum - thickness``: behind a sample with σδ ≈ 1e9 (sharp trained fields reach it) that difference
    cancels in float32, a sample behind an opaque one gets T ≈ 1, the ray's weights sum to 2 and the opaque
    sample's gradient jumps ten-thousandfold (it made a 4800-step demo run collapse).
    """
    alphas = -torch.expm1(-thickness)
    thickness_before = F.pad(torch.cumsum(thickness[..., :-1], dim=-1), (1, 0))
    return alphas * torch.exp(-thickness_before)


def composite(
    samples: ObjectSamples,
    scales: Float[Tensor, "*sbs K"],
    background_color: Optional[Float[Tensor, " 3"]] = None,
) -> CompositeOutputs:
    """Alpha-composite all objects' samples in the order of their scaled distance from the camera.

    Object k's samples sit at scene distance ``s_k · (starts + ends) / 2``; the K·N samples of each ray are
    sorted by it once (stable, so ties keep object order) and composited as one sequence. ``scales``
    broadcasts to [R, K].
    """
    num_rays, num_objects, num_samples = samples.density.shape
    distances = scales[..., None] * samples.midpoints  # [R, K, N], scene units
    flat_distances = distances.reshape(num_rays, num_objects * num_samples)
    order = torch.argsort(flat_distances.detach(), dim=-1, stable=True)
    thickness = torch.gather(optical_thickness(samples).reshape(num_rays, -1), -1, order)
    # weights come out in depth order; scatter them back to their (object, sample) slots
    sorted_weights = weights_along_rays(thickness)
    weights = torch.zeros_like(sorted_weights).scatter(-1, order, sorted_weights)

    accumulation = weights.sum(-1, keepdim=True)
    rgb = (weights.view(num_rays, num_objects, num_samples, 1) * samples.rgb).sum(dim=(1, 2))
    if background_color is not None:
        rgb = rgb + (1.0 - accumulation) * background_color.to(rgb)
    # nerfstudio's expected depth; the clip is per ray (nerfstudio clips to the whole batch's range)
    depth = (weights * flat_distances).sum(-1, keepdim=True) / (accumulation + 1e-10)
    depth = torch.clip(depth, flat_distances.amin(-1, keepdim=True), flat_distances.amax(-1, keepdim=True))
    weights = weights.view(num_rays, num_objects, num_samples)
    return CompositeOutputs(
        rgb=rgb, depth=depth, accumulation=accumulation, object_weights=weights.sum(-1), weights=weights
    )


def render_alone(samples: ObjectSamples) -> AloneOutputs:
    """Render every object by itself in its own units: colour, expected depth, accumulation and weights.

    Each object's N samples must be in ray order (as nerfstudio's samplers return them). These outputs do
    not depend on the configuration, which is what lets the soft Z-buffer score any number of them cheaply.
    """
    weights = weights_along_rays(optical_thickness(samples))
    accumulation = weights.sum(-1)
    distance_sum = (weights * samples.midpoints).sum(-1)
    # a nearly empty ray has no meaningful depth, and dividing by its tiny accumulation would blow up gradients
    empty = accumulation <= MIN_ACCUMULATION_FOR_DEPTH
    depth = torch.where(empty, torch.zeros_like(distance_sum), distance_sum / torch.where(empty, 1.0, accumulation))
    rgb = (weights[..., None] * samples.rgb).sum(-2)
    return AloneOutputs(rgb=rgb, depth=depth, accumulation=accumulation, weights=weights)


def depth_spread(alone: AloneOutputs, samples: ObjectSamples) -> Float[Tensor, "R K"]:
    """Relative depth spread of every object alone: the standard deviation of its sample distances under its
    normalised weights, over its expected depth (0 where the object is nearly empty there)."""
    weights = alone.weights / alone.accumulation.clamp_min(MIN_ACCUMULATION_FOR_DEPTH)[..., None]
    variance = (weights * (samples.midpoints - alone.depth[..., None]).pow(2)).sum(-1)
    spread = variance.clamp_min(0.0).sqrt() / alone.depth.clamp_min(torch.finfo(alone.depth.dtype).tiny)
    return torch.where(alone.depth > 0, spread, torch.zeros_like(spread))


def distortion(
    weights: Float[Tensor, "*bs N"], starts: Float[Tensor, "*bs N"], ends: Float[Tensor, "*bs N"]
) -> Float[Tensor, "*bs"]:
    """mip-NeRF 360's distortion of the weights along each ray: small when they gather at one surface, large for
    fog spread along the ray (which it penalises). Samples must be in ray order (zero-weight ones anywhere).

    ``sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_i - s_i)`` with midpoints m, computed in O(N) with prefix
    sums: for sorted midpoints the pairwise term is ``2 sum_i w_i (m_i W_<i - S_<i)``, ``W_<i`` and ``S_<i`` the
    sums of ``w_j`` and ``w_j m_j`` over the samples before i.
    """
    midpoints = (starts + ends) / 2
    weight_before = torch.cumsum(weights, dim=-1) - weights
    moment_before = torch.cumsum(weights * midpoints, dim=-1) - weights * midpoints
    pairwise = 2 * (weights * (midpoints * weight_before - moment_before)).sum(-1)
    own = (weights.pow(2) * (ends - starts).clamp_min(0)).sum(-1) / 3
    return pairwise + own
