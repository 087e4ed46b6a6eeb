"""The valid set as difference bounds on log-scales, and the rule that labels configurations from a cache."""

import dataclasses
import math

import pytest
import torch

from osn_nerfstudio.core.scale_ranges import ScaleRanges
from osn_nerfstudio.core.valid_set import ValidSet
from osn_nerfstudio.core.validity import (
    SupervisionCache,
    ValidityConfig,
    labelled_candidates,
    pair_constraints,
    valid_set,
    zbuffer_winner,
)

RANGE = torch.tensor([[1.0, 1.0], [0.1, 10.0], [0.1, 10.0]], dtype=torch.float64)
EXACT = ValidityConfig(tolerance=0.0, min_tolerated=0.0)
"""The rule without tolerance: valid iff every contested ray is explained."""


def thin_set() -> ValidSet:
    """1 < s_1 / s_2 < 1.02 (a thin diagonal slab) inside the ranges."""
    upper = torch.full((3, 3), math.inf, dtype=torch.float64)
    upper[1, 2], upper[2, 1] = math.log(1.02), 0.0
    return ValidSet.from_constraints(upper, RANGE)


def random_scales(n: int, seed: int, spread: float = 2.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(spread * (2 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1))
    scales[:, 0] = 1.0
    return scales


def test_membership_is_every_bound_and_the_ranges():
    valid = thin_set()
    scales = torch.tensor(
        [[1.0, 1.01, 1.0], [1.0, 0.99, 1.0], [1.0, 1.03, 1.0], [1.0, 20.0, 19.9], [1.0, 5.0, 4.99]], dtype=torch.float64
    )
    assert valid.contains(scales).tolist() == [True, False, False, False, True]
    # the margin is the log-distance to the nearest bound: negative outside
    assert valid.margins(scales[:1]).item() == pytest.approx(min(math.log(1.01), math.log(1.02 / 1.01)))
    assert valid.margins(scales[2:3]).item() == pytest.approx(math.log(1.02 / 1.03))


def test_closure_gives_the_tight_box_and_ratio_interval():
    upper = torch.full((3, 3), math.inf, dtype=torch.float64)
    upper[1, 0] = math.log(2.0)  # s_1 < 2
    upper[2, 1] = math.log(0.5)  # s_2 < s_1 / 2
    valid = ValidSet.from_constraints(upper, RANGE)
    low, high = valid.log_box()
    assert high[2].exp().item() == pytest.approx(1.0)  # implied: s_2 < 1
    assert low[1].exp().item() == pytest.approx(0.2)  # implied: s_1 > 2 * 0.1
    assert valid.scale_interval(2, 1) == pytest.approx((0.1 / 2.0, 0.5))
    # brute force agrees on every implied bound: no member beyond them, members near them
    members = random_scales(200_000, 0)[valid.contains(random_scales(200_000, 0))]
    assert members[:, 2].max() <= 1.0 and members[:, 2].max() > 0.9
    assert members[:, 1].min() >= 0.2 and members[:, 1].min() < 0.25


def test_contradicting_bounds_are_an_empty_set_with_a_negative_cycle():
    upper = torch.full((3, 3), math.inf, dtype=torch.float64)
    upper[1, 2], upper[2, 1] = math.log(0.9), math.log(1.2)  # s_1 < 0.9 s_2 and s_2 < 1.2 s_1: fine
    assert ValidSet.from_constraints(upper, RANGE).negative_cycle() is None
    upper[2, 1] = math.log(1.1)  # s_1 < 0.9 s_2 < 0.99 s_1
    valid = ValidSet.from_constraints(upper, RANGE)
    assert valid.is_empty()
    assert sorted(valid.negative_cycle()) == [(1, 2), (2, 1)]
    assert not valid.contains(random_scales(10_000, 1)).any()
    # a bound that the ranges contradict: s_1 > 20 (x_0 - x_1 < -log 20) with s_1 <= 10
    upper = torch.full((3, 3), math.inf, dtype=torch.float64)
    upper[0, 1] = -math.log(20.0)
    assert sorted(ValidSet.from_constraints(upper, RANGE).negative_cycle()) == [(0, 1), (1, 0)]


def test_samples_of_a_thin_set_are_members_spread_over_it():
    valid = thin_set()
    for proposals in (1 << 20, 1000):  # rejection alone; hit-and-run filling in
        scales = valid.sample(4000, torch.Generator().manual_seed(2), proposals=proposals)
        assert valid.contains(scales).all()
        ratio = scales[:, 1] / scales[:, 2]
        assert ratio.min() < 1.002 and ratio.max() > 1.018
        # spread along the slab: both ends of the ranges are reached
        assert scales[:, 2].min() < 0.15 and scales[:, 2].max() > 6.0
    with pytest.raises(ValueError, match="empty"):
        ValidSet(torch.tensor([[0.0, -1.0], [0.5, 0.0]], dtype=torch.float64)).sample(3, torch.Generator())


def random_cache(num_rays: int, seed: int) -> SupervisionCache:
    g = torch.Generator().manual_seed(seed)
    acc = (torch.rand(num_rays, 3, generator=g) < 0.6).double()
    return SupervisionCache(
        depth=torch.exp(torch.randn(num_rays, 3, generator=g, dtype=torch.float64)),
        acc=acc,
        label=torch.randint(0, 3, (num_rays,), generator=g),
        weight=torch.ones(num_rays, dtype=torch.float64),
    )


def test_without_tolerance_the_set_is_exactly_the_configurations_that_explain_every_contested_ray():
    cache = random_cache(12, seed=3)
    labelled = valid_set(cache, RANGE, EXACT)
    assert labelled.contradicted_weight == 0 or labelled.valid.is_empty() is False
    scales = random_scales(5000, 4, spread=1.0)
    winners = zbuffer_winner(cache.depth, cache.acc, scales, 0.5)
    label_qualifies = cache.acc.gather(1, cache.label[:, None])[:, 0] > 0.5
    explains_every_ray = ((winners == cache.label) | ~label_qualifies).all(-1)
    if labelled.contradicted_weight == 0:
        assert torch.equal(labelled.valid.contains(scales), explains_every_ray)
    else:  # contradicting rays were set aside: every configuration that explains all of them is still valid
        assert (labelled.valid.contains(scales) | ~explains_every_ray).all()


def slab_cache(disputed: int, undisputed: int) -> SupervisionCache:
    """Object 1 in front of object 2 on half the disputed rays (s_1 < 1.02 s_2 by their depths), object 2 in front
    of object 1 on the other half (s_2 < s_1), and undisputed rays where each object alone qualifies."""
    half = disputed // 2
    depth = torch.ones(disputed + undisputed, 3, dtype=torch.float64)
    acc = torch.zeros_like(depth)
    label = torch.zeros(len(depth), dtype=torch.long)
    depth[:half, 2], label[:half] = 1.02, 1  # label 1 wins iff s_1 < 1.02 s_2
    label[half:disputed] = 2  # label 2 wins iff s_2 < s_1
    acc[:disputed, 1:] = 1.0
    label[disputed:] = torch.arange(undisputed) % 3
    acc[torch.arange(disputed, len(depth)), label[disputed:]] = 1.0
    return SupervisionCache(depth, acc, label, torch.ones(len(depth), dtype=torch.float64))


def test_a_thin_set_stays_thin_whatever_the_undisputed_rays():
    config = ValidityConfig(tolerance=0.01, min_tolerated=3.0)
    alone = valid_set(slab_cache(400, 0), RANGE, config).valid
    crowded = valid_set(slab_cache(400, 4000), RANGE, config).valid
    assert torch.equal(alone.bounds, crowded.bounds)
    assert crowded.scale_interval(1, 2) == pytest.approx((1.0, 1.02))


def test_a_few_noisy_rays_are_tolerated_and_contradicting_ones_set_aside():
    cache = slab_cache(400, 0)
    truth = torch.tensor([[1.0, 1.002, 1.0]], dtype=torch.float64)
    # two rays claim object 2 is in front of object 1 only while s_2 < s_1 / 1.01: noise within the tolerance
    cache.depth[200:202, 1] = 1 / 1.01
    config = ValidityConfig(tolerance=0.01, min_tolerated=3.0)
    labelled = valid_set(cache, RANGE, config)
    assert labelled.valid.contains(truth).all() and labelled.contradicted_weight == 0
    assert not valid_set(cache, RANGE, EXACT).valid.contains(truth).any()
    # 20 rays (10% of that side) claim that s_2 < 0.6 s_1: that contradicts the other side's 200 rays, and gives way
    cache.depth[200:220, 1] = 0.6
    labelled = valid_set(cache, RANGE, config)
    assert labelled.contradicted_weight == pytest.approx(20 - 3)
    assert labelled.valid.contains(truth).all()
    assert labelled.valid.scale_interval(1, 2) == pytest.approx((1.0, 1.02))


def test_rays_asking_for_what_the_ranges_forbid_are_set_aside():
    # background rays on which object 1 qualifies in front of it unless s_1 > 20: its range stops at 10
    depth = torch.tensor([[1.0, 0.05, 1.0]] * 5 + [[2.0, 1.0, 1.0]] * 50, dtype=torch.float64)
    acc = torch.tensor([[1.0, 1.0, 0.0]] * 55, dtype=torch.float64)
    label = torch.tensor([0] * 5 + [1] * 50)
    cache = SupervisionCache(depth, acc, label, torch.ones(55, dtype=torch.float64))
    labelled = valid_set(cache, RANGE, EXACT)
    assert labelled.contradicted_weight == 5
    assert labelled.valid.scale_interval(1, 0) == pytest.approx((0.1, 2.0))


def test_labelled_candidates_find_a_thin_set_and_its_faces():
    ranges = ScaleRanges(RANGE.float())
    config = ValidityConfig(uniform_candidates=2000, inside_candidates=500, boundary_candidates=500)
    u, labels = labelled_candidates(thin_set(), ranges, config, torch.Generator().manual_seed(0))
    assert u.shape == (3000, 2) and labels.dtype == torch.bool
    assert torch.equal(labels, thin_set().contains(ranges.denormalise(u.double())))
    assert labels[2000:2500].all()  # inside the set
    assert 0.1 < labels[2500:].float().mean() < 0.9  # on both sides of its faces
    assert labels[:2000].float().mean() < 0.02  # the slab is under 1 % of the range box


def test_depth_margin_relaxes_each_constraint_by_its_renders_spread():
    cache = slab_cache(400, 0)
    cache.spread = torch.zeros_like(cache.depth)
    cache.spread[:200, 1], cache.spread[:200, 2] = 0.01, 0.02  # object 1's side: label 1, competitor 2
    sharp = {(p.label, p.competitor): p for p in pair_constraints(cache, 0.5)}
    relaxed = {(p.label, p.competitor): p for p in pair_constraints(cache, 0.5, depth_margin=2.0)}
    torch.testing.assert_close(relaxed[(1, 2)].thresholds, sharp[(1, 2)].thresholds + 2.0 * 0.03)
    torch.testing.assert_close(relaxed[(2, 1)].thresholds, sharp[(2, 1)].thresholds)
    cache.spread = None  # no spreads: nothing to relax
    torch.testing.assert_close(pair_constraints(cache, 0.5, depth_margin=2.0)[0].thresholds, sharp[(1, 2)].thresholds)


def test_foggy_constraints_give_way_to_sharp_ones_with_a_depth_margin():
    """Object 1 rests against object 2: its rays bound s_1 <= s_2, and the truth (s_1 = 0.99 s_2) lies next to that
    face. A fifth of them come from fog nearer than object 2's surface ("s_1 < 0.97 s_2"): too many for the
    tolerance, so without a margin they cut the truth out. Their large spread lets them give way; the sharp rays
    still bound the set next to the truth."""
    n = 200
    depth = torch.ones(n, 3, dtype=torch.float64)
    acc = torch.zeros_like(depth)
    acc[:, 1:] = 1.0
    depth[: n // 5, 2] = 0.97
    spread = torch.full_like(depth, 0.002)
    spread[: n // 5, 2] = 0.05
    cache = SupervisionCache(depth, acc, torch.ones(n, dtype=torch.long), torch.ones(n, dtype=torch.float64), spread)
    truth = torch.tensor([[1.0, 0.99, 1.0]], dtype=torch.float64)
    config = ValidityConfig(tolerance=0.01, min_tolerated=3.0, depth_margin=0.0)
    sharp_only = valid_set(cache, RANGE, config).valid
    assert not sharp_only.contains(truth).any()
    assert sharp_only.scale_interval(1, 2)[1] == pytest.approx(0.97)
    relaxed = valid_set(cache, RANGE, dataclasses.replace(config, depth_margin=1.0)).valid
    assert relaxed.contains(truth).all()
    # the sharp rays' bound, relaxed by their own spread only
    assert relaxed.scale_interval(1, 2)[1] == pytest.approx(math.exp(2 * 0.002), rel=1e-9)


def test_depth_spread_of_renders_alone():
    from osn_nerfstudio.core.compositing import AloneOutputs, ObjectSamples, depth_spread

    starts = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    samples = ObjectSamples(starts, starts + 0.5, torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, 3))
    # object 0: all weight on one sample (a surface); object 1: half on the first and last (1.25 and 3.25)
    weights = torch.tensor([[[0.0, 0.9, 0.0], [0.4, 0.0, 0.4]]])
    accumulation = weights.sum(-1)
    depth = (weights * samples.midpoints).sum(-1) / accumulation
    alone = AloneOutputs(torch.zeros(1, 2, 3), depth, accumulation, weights)
    torch.testing.assert_close(depth_spread(alone, samples), torch.tensor([[0.0, 1.0 / 2.25]]))
