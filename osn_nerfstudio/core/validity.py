"""Z-buffer over cached per-object renderings, and the validity of scale configurations (DESIGN.md section 2).

Pure torch, no nerfstudio import. For every supervision ray the model renders each object alone once and
caches its expected own-unit depth ``d_k`` and accumulation ``a_k``. Under a configuration
``s = (1, s_1, ..., s_{K-1})`` object k sits at scene distance ``s_k * d_k`` on that ray, so scoring any number
of configurations needs no field evaluation.

Fast exact validity. The labelled object l wins a ray iff it qualifies (``a_l > min_accumulation``) and is
nearer than every other qualifying object k: ``s_l d_l < s_k d_k``, i.e. ``log s_l - log s_k < log d_k - log d_l``.
The right-hand side is a per-ray threshold that does not depend on s, so :func:`plan_validity` sorts the rays
once by the pattern of qualifying objects:

* rays whose winner cannot change with s (no competitor, the label does not qualify, nothing qualifies) add a
  constant;
* rays with one competitor k are a one-dimensional count: sort their thresholds once, then each configuration
  costs one binary search (``searchsorted``) per (l, k) pair;
* rays with several competitors (occlusion boundaries) are compared in chunks of configurations, in float32,
  without materialising ``[C, R, K]``.

Ties (``s_l d_l == s_k d_k`` to the last bit) are decided in log space here and by argmin in
:func:`zbuffer_winner`; both are measure-zero events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, List

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

DEFAULT_CHUNK_ELEMENTS = 2**22
"""Configurations x rays compared per step for rays with several competitors (about 24 MiB of temporaries).
Chosen by measurement (``benchmarks/validity_speed.py --sweep-chunks``, 2-core CPU): throughput is flat from
2^20 to 2^22 and drops beyond; the larger end makes fewer parallel regions, which matters when other processes
compete for the cores (each region waits for every intra-op thread)."""


@dataclass
class SupervisionCache:
    """Per-object renderings of a fixed set of supervision rays (keypoint rays and mask pixels of all objects)."""

    depth: Float[Tensor, "R K"]
    """Expected distance along the ray of each object rendered alone, in its own units (weights normalised by
    the object's accumulation)."""
    acc: Float[Tensor, "R K"]
    """Accumulation of each object rendered alone."""
    label: Int[Tensor, "R"]
    """Object the data says is visible on the ray (keypoint owner or mask label), in [0, K)."""
    weight: Float[Tensor, "R"]
    """Non-negative weight of the ray in the validity score (keypoint confidence, 1 for mask pixels)."""

    def __post_init__(self) -> None:
        num_rays, num_objects = self.depth.shape
        if self.acc.shape != self.depth.shape or self.label.shape != (num_rays,) or self.weight.shape != (num_rays,):
            raise ValueError(
                f"supervision cache shapes disagree: depth {tuple(self.depth.shape)}, acc {tuple(self.acc.shape)}, "
                f"label {tuple(self.label.shape)}, weight {tuple(self.weight.shape)}; "
                "expected [R, K], [R, K], [R], [R]."
            )
        if num_rays and (self.label.min() < 0 or self.label.max() >= num_objects):
            raise ValueError(
                f"supervision labels must be object indices in [0, {num_objects}); got "
                f"{int(self.label.min())}..{int(self.label.max())}. Drop ignored pixels before caching."
            )
        if num_rays and self.weight.min() < 0:
            raise ValueError("supervision ray weights must be non-negative.")

    @property
    def num_rays(self) -> int:
        return self.depth.shape[0]

    @property
    def num_objects(self) -> int:
        return self.depth.shape[1]


def zbuffer_winner(
    cache_depth: Float[Tensor, "R K"],
    cache_acc: Float[Tensor, "R K"],
    scales: Float[Tensor, "C K"],
    min_accumulation: float,
) -> Int[Tensor, "C R"]:
    """Hard Z-buffer: per configuration and ray, the nearest object among those with accumulation above
    ``min_accumulation``; where none qualifies, the object with the largest accumulation.

    Materialises ``[C, R, K]``: meant for inspection and tests; score many configurations with :func:`validity`.
    """
    qualifies = cache_acc > min_accumulation
    depth = torch.where(qualifies, cache_depth, torch.full_like(cache_depth, math.inf))
    winner = (scales[:, None, :] * depth[None]).argmin(dim=-1)
    transparent = ~qualifies.any(dim=-1)
    return torch.where(transparent, cache_acc.argmax(dim=-1), winner)


def soft_zbuffer(
    cache_depth: Float[Tensor, "R K"],
    cache_acc: Float[Tensor, "R K"],
    scales: Float[Tensor, "C K"],
    beta: float,
    depth_unit: float,
) -> Float[Tensor, "C R K"]:
    """Soft Z-buffer: per configuration and ray, scores ``a_k exp(-beta s_k d_k / depth_unit)`` normalised over k.

    Computed as a softmax of ``log a_k - beta s_k d_k / depth_unit`` so that large beta does not underflow.
    ``depth_unit`` (the scene's far bound) makes beta independent of the scene's units. As beta grows the
    scores tend to the hard Z-buffer among objects with non-zero accumulation.
    """
    log_acc = cache_acc.clamp_min(torch.finfo(cache_acc.dtype).tiny).log()
    logits = log_acc[None] - (beta / depth_unit) * scales[:, None, :] * cache_depth[None]
    return torch.softmax(logits, dim=-1)


@dataclass
class SingleCompetitorRays:
    """Rays labelled ``label`` on which exactly one other object, ``competitor``, qualifies."""

    label: int
    competitor: int
    thresholds: Float[Tensor, "n"]
    """Ascending ``log d_competitor - log d_label``: the label wins iff ``log s_label - log s_competitor`` is below."""
    weight_above: Float[Tensor, "n+1"]
    """``weight_above[i]`` = total weight of the rays with sorted index >= i."""


@dataclass
class MultiCompetitorRays:
    """Rays labelled ``label`` on which two or more other objects qualify."""

    label: int
    competitors: Int[Tensor, "D"]
    thresholds: Float[Tensor, "D n"]
    """``log d_k - log d_label`` per competitor and ray (+inf where that competitor does not qualify)."""
    weight: Float[Tensor, "n"]


@dataclass
class ValidityPlan:
    """Everything about a supervision cache that validity needs, precomputed once; independent of the scales."""

    num_objects: int
    total_weight: float
    fixed_weight: float
    """Weight of the rays the labelled object wins whatever the configuration."""
    single: List[SingleCompetitorRays] = field(default_factory=list)
    multi: List[MultiCompetitorRays] = field(default_factory=list)


def plan_validity(cache: SupervisionCache, min_accumulation: float) -> ValidityPlan:
    """Sort the supervision rays by which objects qualify on them (see the module docstring)."""
    num_objects = cache.num_objects
    weight = cache.weight.double()
    qualifies = cache.acc > min_accumulation
    label_qualifies = qualifies.gather(1, cache.label[:, None])[:, 0]
    competitors = qualifies & (torch.arange(num_objects, device=qualifies.device) != cache.label[:, None])
    num_competitors = competitors.sum(dim=1)

    transparent = ~qualifies.any(dim=1)
    always_right = (label_qualifies & (num_competitors == 0)) | (transparent & (cache.acc.argmax(1) == cache.label))
    plan = ValidityPlan(num_objects, float(weight.sum()), float(weight[always_right].sum()))

    log_depth = cache.depth.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    # threshold[r, k] = log d_k - log d_label; +inf where k cannot occlude the label
    thresholds = log_depth - log_depth.gather(1, cache.label[:, None])
    thresholds = thresholds.masked_fill(~competitors, math.inf)
    contested = label_qualifies & (num_competitors > 0)
    for label in range(num_objects):
        mine = contested & (cache.label == label)
        for competitor in range(num_objects):
            rays = mine & (num_competitors == 1) & competitors[:, competitor]
            if rays.any():
                sorted_rays = _single_competitor_rays(label, competitor, thresholds[rays, competitor], weight[rays])
                plan.single.append(sorted_rays)
        rays = mine & (num_competitors > 1)
        if rays.any():
            present = competitors[rays].any(dim=0).nonzero()[:, 0]
            plan.multi.append(
                MultiCompetitorRays(
                    label=label,
                    competitors=present,
                    thresholds=thresholds[rays][:, present].T.float().contiguous(),
                    weight=cache.weight[rays].float(),
                )
            )
    return plan


def _single_competitor_rays(label: int, competitor: int, thresholds: Tensor, weight: Tensor) -> SingleCompetitorRays:
    order = thresholds.argsort()
    weight_above = torch.cat([weight[order].flip(0).cumsum(0).flip(0), weight.new_zeros(1)])
    return SingleCompetitorRays(label, competitor, thresholds[order].contiguous(), weight_above)


def score_plan(
    plan: ValidityPlan, scales: Float[Tensor, "C K"], chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> Float[Tensor, "C"]:
    """Weighted fraction of the planned rays that the labelled object wins, per configuration."""
    if scales.ndim != 2 or scales.shape[1] != plan.num_objects:
        raise ValueError(f"scales must be [C, {plan.num_objects}], got {tuple(scales.shape)}.")
    if plan.total_weight <= 0:
        # no evidence against any configuration
        return torch.ones(scales.shape[0], dtype=scales.dtype, device=scales.device)
    with torch.no_grad():
        log_scales = scales.double().log()
        right = torch.full((scales.shape[0],), plan.fixed_weight, dtype=torch.float64, device=scales.device)
        for rays in plan.single:
            gap = (log_scales[:, rays.label] - log_scales[:, rays.competitor]).contiguous()
            right += rays.weight_above[torch.searchsorted(rays.thresholds, gap, right=True)]
        for rays in plan.multi:
            gaps = (log_scales[:, rays.label, None] - log_scales[:, rays.competitors]).float()
            right += _count_multi(gaps, rays, chunk_elements)
    return (right / plan.total_weight).to(scales.dtype)


def _count_multi(gaps: Float[Tensor, "C D"], rays: MultiCompetitorRays, chunk_elements: int) -> Float[Tensor, "C"]:
    """Weight of the rays on which every gap is below its threshold, chunked over configurations."""
    num_rays = rays.weight.shape[0]
    chunk = max(1, chunk_elements // num_rays)
    out = torch.empty(gaps.shape[0], dtype=torch.float64, device=gaps.device)
    for start in range(0, gaps.shape[0], chunk):
        block = gaps[start : start + chunk]
        wins = block[:, 0, None] < rays.thresholds[0]
        for d in range(1, block.shape[1]):
            wins &= block[:, d, None] < rays.thresholds[d]
        out[start : start + chunk] = wins.to(rays.weight.dtype) @ rays.weight
    return out


def validity(
    cache: SupervisionCache,
    scales: Float[Tensor, "C K"],
    min_accumulation: float,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Float[Tensor, "C"]:
    """Weighted fraction of supervision rays whose hard Z-buffer winner is the labelled object, per configuration.

    Equal to ``weight . (zbuffer_winner(...) == label) / weight.sum()`` without materialising ``[C, R, K]``.
    To score several batches of configurations against one cache, call :func:`plan_validity` once and
    :func:`score_plan` per batch. A cache with no weight scores every configuration 1 (nothing contradicts it).
    """
    return score_plan(plan_validity(cache, min_accumulation), scales, chunk_elements)


def validity_cut(scores: Float[Tensor, "C"], threshold: float, tolerance: Optional[float] = None) -> float:
    """Lowest score counted valid before the ``min_fraction`` fallback of :func:`validity_labels`: the threshold,
    or the best score minus ``tolerance`` when that is lower."""
    if tolerance is None or scores.numel() == 0:
        return threshold
    return min(threshold, float(scores.max()) - tolerance)


def validity_labels(
    scores: Float[Tensor, "C"], threshold: float, min_fraction: float, tolerance: Optional[float] = None
) -> Bool[Tensor, "C"]:
    """Valid: scoring at least ``threshold``, or within ``tolerance`` of the best score (rays that no
    configuration explains, e.g. a learned field's floaters, lower every score alike). If fewer than
    ``min_fraction`` pass, the best ``ceil(min_fraction * C)`` instead, so the scale network always sees
    some positives."""
    if scores.numel() == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    valid = scores >= validity_cut(scores, threshold, tolerance)
    num_required = min(math.ceil(min_fraction * scores.shape[0]), scores.shape[0])
    if int(valid.sum()) >= num_required:
        return valid
    best = torch.zeros_like(valid)
    best[scores.topk(num_required).indices] = True
    return best
