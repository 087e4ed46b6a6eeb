"""Z-buffer over cached per-object renderings, and the validity of scale configurations (docs/method.md).

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
from typing import List, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from osn_nerfstudio.core.valid_set import ValidSet

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
    label: Int[Tensor, " R"]
    """Object the data says is visible on the ray (keypoint owner or mask label), in [0, K)."""
    weight: Float[Tensor, " R"]
    """Non-negative weight of the ray in the validity score (keypoint confidence, 1 for mask pixels)."""
    spread: Optional[Float[Tensor, "R K"]] = None
    """Relative depth spread of each object alone (standard deviation of its sample distances under its weights, over
    its depth): about 0 on a sharp surface, large in fog. None: every render is taken as a sharp surface."""

    def __post_init__(self) -> None:
        num_rays, num_objects = self.depth.shape
        spread_shape = self.depth.shape if self.spread is None else self.spread.shape
        if (
            self.acc.shape != self.depth.shape
            or spread_shape != self.depth.shape
            or self.label.shape != (num_rays,)
            or self.weight.shape != (num_rays,)
        ):
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
    thresholds: Float[Tensor, " n"]
    """Ascending ``log d_competitor - log d_label``: the label wins iff ``log s_label - log s_competitor`` is below."""
    weight_above: Float[Tensor, " n+1"]
    """``weight_above[i]`` = total weight of the rays with sorted index >= i."""


@dataclass
class MultiCompetitorRays:
    """Rays labelled ``label`` on which two or more other objects qualify."""

    label: int
    competitors: Int[Tensor, " D"]
    thresholds: Float[Tensor, "D n"]
    """``log d_k - log d_label`` per competitor and ray (+inf where that competitor does not qualify)."""
    weight: Float[Tensor, " n"]


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
) -> Float[Tensor, " C"]:
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


def _count_multi(gaps: Float[Tensor, "C D"], rays: MultiCompetitorRays, chunk_elements: int) -> Float[Tensor, " C"]:
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
) -> Float[Tensor, " C"]:
    """Weighted fraction of supervision rays whose hard Z-buffer winner is the labelled object, per configuration.

    Equal to ``weight . (zbuffer_winner(...) == label) / weight.sum()`` without materialising ``[C, R, K]``.
    To score several batches of configurations against one cache, call :func:`plan_validity` once and
    :func:`score_plan` per batch. A cache with no weight scores every configuration 1 (nothing contradicts it).
    """
    return score_plan(plan_validity(cache, min_accumulation), scales, chunk_elements)


@dataclass
class ValidityConfig:
    """Validity labelling (docs/method.md): the supervision rays it reads, the rule that labels configurations valid
    on them, and the candidates it labels for the scale network."""

    pixels_per_object: int = 4096
    """Mask pixels per object added to all keypoints to form the supervision rays (caching 28k rays costs about a
    second on a 2-core CPU)."""
    boundary_pixels_per_object: int = 1024
    """Extra supervision pixels per object next to another object, where the video shows which of the two is in
    front; uniform mask pixels rarely land there."""
    boundary_width: int = 3
    """Pixels from another object that count as next to it."""
    label_gap: int = 2
    """Supervision pixels keep this many pixels from any other label: masks and learned silhouettes are least certain
    on their outlines (benchmarks/RESULTS.md)."""
    hidden_pixels_per_pair: int = 0
    """Supervision pixels per (shown, hidden) pair of objects where a foreground object lies hidden behind what the
    video shows. 0: none (they excluded the truth indoors, benchmarks/RESULTS.md)."""
    hidden_candidates: int = 1024
    """Pixels per frame and foreground object searched for it hiding behind another (drawn inside its box)."""
    hidden_gap: int = 3
    """Hidden-object pixels keep this many pixels from the object's own visible pixels (learned silhouettes bleed)."""
    depth_margin: float = 0.5
    """Each constraint is relaxed by this many relative depth spreads of its two renders (``SupervisionCache.spread``),
    so fog decides less than sharp surfaces (benchmarks/RESULTS.md). 0: the renders' expected depths alone."""
    min_accumulation: float = 0.5
    """Objects more transparent than this on a ray do not take part in its Z-buffer."""
    tolerance: float = 0.01
    """Fraction of the constraints that put one object in front of another (one pair, one order) a valid
    configuration may break: rays that no configuration explains (floaters, mask errors) must not decide."""
    min_tolerated: float = 3.0
    """Constraint weight (about that many rays) tolerated per pair and order however few rays it has."""
    uniform_candidates: int = 8192
    """Labelled configurations drawn uniformly over the scale ranges at each refit (they teach what is invalid)."""
    inside_candidates: int = 8192
    """Labelled configurations drawn inside the valid set (however thin it is)."""
    boundary_candidates: int = 8192
    """Labelled configurations near the valid set's faces: members moved at random, landing on either side."""
    boundary_spread: Tuple[float, float] = (0.002, 0.05)
    """Range of the moves' standard deviation, in normalised log-scale (the scale network's input); each move draws
    one log-uniformly, so that faces of thin sets and of wide ones both get close neighbours."""


@dataclass
class PairConstraints:
    """The constraints of a cache that put ``label`` in front of ``competitor``: the label wins each such ray iff
    ``log s_label - log s_competitor < threshold``. The first ``discarded`` (tightest) ones are set aside."""

    label: int
    competitor: int
    thresholds: Float[Tensor, " n"]
    """Ascending ``log d_competitor - log d_label`` (float64)."""
    weight: Float[Tensor, " n"]
    rays: Int[Tensor, " n"]
    """Row of the cache each constraint comes from."""
    discarded: int = 0

    @property
    def bound(self) -> float:
        """The bound on ``log s_label - log s_competitor`` the kept constraints give (inf when none is kept)."""
        return float(self.thresholds[self.discarded]) if self.discarded < len(self.thresholds) else math.inf

    def tolerate(self, tolerance: float, min_tolerated: float) -> None:
        """Set aside the tightest constraints up to ``max(min_tolerated, tolerance * total weight)``."""
        allowed = max(min_tolerated, tolerance * float(self.weight.sum()))
        self.discarded = int((self.weight.cumsum(0) <= allowed).sum())

    def cost_to_raise(self, target: float) -> Tuple[float, int]:
        """What raising the bound to ``target`` sets aside: the weight of the kept constraints below it, and the new
        ``discarded``."""
        position = torch.searchsorted(self.thresholds, torch.tensor([target], dtype=torch.float64))
        end = max(self.discarded, int(position))
        return float(self.weight[self.discarded : end].sum()), end


def pair_constraints(
    cache: SupervisionCache, min_accumulation: float, depth_margin: float = 0.0
) -> List[PairConstraints]:
    """Every (ray, competitor) constraint of the cache, grouped by (label, competitor).

    Only contested rays give constraints: the label qualifies (``acc > min_accumulation``) and so does at least one
    other object. A ray where the label does not qualify is wrong in every configuration and one where no other
    object qualifies right in every one: neither says anything about the scales. With ``depth_margin`` and the
    cache's ``spread``, each threshold is raised by ``depth_margin * (spread_label + spread_competitor)``: the
    log-depth uncertainty of the two renders.
    """
    qualifies = cache.acc > min_accumulation
    label_qualifies = qualifies.gather(1, cache.label[:, None])[:, 0]
    log_depth = cache.depth.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    label_log_depth = log_depth.gather(1, cache.label[:, None])[:, 0]
    if depth_margin > 0 and cache.spread is not None:
        # the label's margin is folded into its log-depth, the competitor's into its own: both loosen the threshold
        margin = depth_margin * cache.spread.double()
        label_log_depth = label_log_depth - margin.gather(1, cache.label[:, None])[:, 0]
        log_depth = log_depth + margin
    out = []
    for label in range(cache.num_objects):
        mine = label_qualifies & (cache.label == label)
        for competitor in range(cache.num_objects):
            rays = mine & qualifies[:, competitor] if competitor != label else None
            if rays is None or not rays.any():
                continue
            rows = rays.nonzero()[:, 0]
            thresholds = log_depth[rows, competitor] - label_log_depth[rows]
            order = thresholds.argsort()
            weight = cache.weight[rows].double()[order]
            out.append(PairConstraints(label, competitor, thresholds[order], weight, rows[order]))
    return out


@dataclass
class LabelledSet:
    """What the validity rule made of a supervision cache."""

    valid: ValidSet
    """The configurations it labels valid."""
    constraint_weight: float
    """Total weight of the constraints the contested rays gave."""
    tolerated_weight: float
    """Weight of the constraints set aside as noise (each order of each pair up to the tolerance)."""
    contradicted_weight: float
    """Weight of further constraints set aside because they contradicted better supported ones."""


def valid_set(cache: SupervisionCache, scale_range: Float[Tensor, "K 2"], config: ValidityConfig) -> LabelledSet:
    """The configurations the validity rule labels valid on ``cache``.

    Every ordered pair of objects gets one bound from its constraints, after its tightest ones up to the tolerance
    are set aside; undisputed rays play no part, so a thin valid set stays thin however many of them there are.
    Where the bounds contradict each other (or the scale ranges), so that no configuration would be valid, the
    contradiction is a cycle of bounds summing below zero: the bound on it that the fewest rays support is relaxed
    until the cycle closes, and so on until no cycle is left. Rays that ask for what nothing else allows (a fog of an
    object's field over another's pixels) are set aside that way, and the truth stays in the set.
    """
    constraints = pair_constraints(cache, config.min_accumulation, config.depth_margin)
    for pair in constraints:
        pair.tolerate(config.tolerance, config.min_tolerated)
    by_edge = {(pair.label, pair.competitor): pair for pair in constraints}
    tolerated = sum(float(pair.weight[: pair.discarded].sum()) for pair in constraints)
    caps = ValidSet.from_constraints(torch.full((cache.num_objects,) * 2, math.inf), scale_range).bounds
    while True:
        upper = torch.full((cache.num_objects,) * 2, math.inf, dtype=torch.float64)
        for pair in constraints:
            upper[pair.label, pair.competitor] = pair.bound
        valid = ValidSet.from_constraints(upper, scale_range)
        cycle = valid.negative_cycle()
        if cycle is None:
            break
        _relax_cheapest(cycle, valid, by_edge, caps)
    total = sum(float(pair.weight.sum()) for pair in constraints)
    discarded = sum(float(pair.weight[: pair.discarded].sum()) for pair in constraints)
    return LabelledSet(valid, total, tolerated, discarded - tolerated)


def _relax_cheapest(cycle: List[Tuple[int, int]], valid: ValidSet, by_edge: dict, caps: Tensor) -> None:
    """Set aside the fewest constraints (by weight) that close ``cycle``: raise one pair's bound by the cycle's
    deficit. Where the scale ranges (``caps``) keep every such bound from rising that far, the pair that gains most
    per weight set aside is raised to its cap, and a later round closes the rest."""
    deficit = -sum(float(valid.bounds[i, j]) for i, j in cycle)
    options = []
    for i, j in cycle:
        pair, cap = by_edge.get((i, j)), float(caps[i, j])
        if pair is None or pair.bound >= cap:
            continue  # the scale range is this bound: nothing to set aside
        target = pair.bound + deficit
        if target <= cap:
            cost, end = pair.cost_to_raise(target)
            options.append(((0, cost), pair, end))
        else:
            cost, end = pair.cost_to_raise(cap)
            options.append(((1, -(cap - pair.bound) / max(cost, 1e-12)), pair, end))
    if not options:
        raise ValueError("the scale ranges alone leave no configuration valid; check the scene's scale ranges")
    _, pair, end = min(options, key=lambda option: option[0])
    pair.discarded = end


def labelled_candidates(
    valid: ValidSet, ranges, config: ValidityConfig, generator: torch.Generator
) -> Tuple[Float[Tensor, "C Km1"], Bool[Tensor, " C"]]:
    """Normalised configurations and their labels for fitting the scale network: uniform over the scale ranges,
    inside the valid set, and near its faces (members moved at random in normalised log-scale)."""
    num_inputs = valid.num_objects - 1
    uniform = torch.rand(config.uniform_candidates, num_inputs, generator=generator, dtype=torch.float64)
    parts = [uniform]
    if not valid.is_empty():
        inside = ranges.normalise(valid.sample(config.inside_candidates + config.boundary_candidates, generator))
        inside, near = inside.split([config.inside_candidates, config.boundary_candidates])
        low, high = (math.log(spread) for spread in config.boundary_spread)
        spread = torch.exp(low + (high - low) * torch.rand(len(near), 1, generator=generator, dtype=near.dtype))
        moved = near + spread * torch.randn(near.shape, generator=generator, dtype=near.dtype)
        parts += [inside, moved.clamp(0.0, 1.0)]
    u = torch.cat(parts)
    return u.float(), valid.contains(ranges.denormalise(u))
