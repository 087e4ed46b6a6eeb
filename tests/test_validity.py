"""Hard and soft Z-buffer over cached per-object renderings, and the validity of scale configurations."""

import pytest
import torch

from osn_nerfstudio.core.validity import (
    SupervisionCache,
    plan_validity,
    score_plan,
    soft_zbuffer,
    validity,
    zbuffer_winner,
)

# one ray: background at 10, object 1 at 2 and object 2 at 5 (own units)
PLANES = torch.tensor([[10.0, 2.0, 5.0]])
OPAQUE = torch.ones(1, 3)


def random_cache(num_rays: int, num_objects: int, seed: int) -> SupervisionCache:
    """Depths in [0.5, 5], accumulations in [0, 1] (many below 0.3), a few fully transparent rays."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.rand(num_rays, num_objects, generator=g)
    acc[::5] *= 0.2
    return SupervisionCache(
        depth=0.5 + 4.5 * torch.rand(num_rays, num_objects, generator=g),
        acc=acc,
        label=torch.randint(0, num_objects, (num_rays,), generator=g),
        weight=torch.rand(num_rays, generator=g),
    )


def random_scales(num_configurations: int, num_objects: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(3.0 * torch.rand(num_configurations, num_objects, generator=g) - 1.5)
    scales[:, 0] = 1.0
    return scales


@pytest.mark.parametrize(
    "s1, s2, winner",
    [
        (1.0, 1.0, 1),  # 2 < 5 < 10
        (3.0, 1.0, 2),  # 6 > 5
        (3.0, 1.5, 1),  # 6 < 7.5
        (6.0, 3.0, 0),  # 12, 15 behind the background at 10
        (1.0, 0.3, 2),  # 1.5 < 2
        (4.0, 2.1, 1),  # 8 < 10 < 10.5
        (5.5, 2.1, 0),  # 10 < 10.5 < 11
    ],
)
def test_two_planes_nearest_wins(s1, s2, winner):
    scales = torch.tensor([[1.0, s1, s2]])
    assert zbuffer_winner(PLANES, OPAQUE, scales, 0.1).tolist() == [[winner]]


def test_accumulation_below_threshold_is_ignored():
    acc = torch.tensor([[1.0, 0.05, 1.0]])
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.1, 3.0]])
    # object 1 is nearest in both but too transparent: object 2, then the background
    assert zbuffer_winner(PLANES, acc, scales, 0.1).tolist() == [[2], [0]]
    assert zbuffer_winner(PLANES, acc, scales, 0.01).tolist() == [[1], [1]]


def test_transparent_ray_falls_back_to_largest_accumulation():
    acc = torch.tensor([[0.01, 0.02, 0.05]])
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.1, 10.0], [1.0, 10.0, 0.1]])
    assert zbuffer_winner(PLANES, acc, scales, 0.1).tolist() == [[2], [2], [2]]


def hand_built_cache() -> SupervisionCache:
    depth = PLANES.expand(6, 3).clone()
    acc = torch.tensor(
        [
            [1.0, 1.0, 1.0],  # label 1
            [1.0, 1.0, 1.0],  # label 2
            [1.0, 0.0, 1.0],  # label 0, object 1 absent
            [0.01, 0.05, 0.0],  # transparent: object 1 has the most accumulation, always right
            [1.0, 0.0, 1.0],  # label 1 but object 1 absent: always wrong
            [0.0, 0.0, 1.0],  # only the label qualifies: always right
        ]
    )
    label = torch.tensor([1, 2, 0, 1, 1, 2])
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    return SupervisionCache(depth=depth, acc=acc, label=label, weight=weight)


def test_validity_is_the_weighted_fraction_of_rays_won_by_their_label():
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0], [1.0, 6.0, 3.0], [1.0, 1.0, 2.5]])
    # rays won by their label, per configuration: {0,3,5}, {1,3,5}, {2,3,5}, {0,2,3,5}
    expected = torch.tensor([1 + 4 + 6, 2 + 4 + 6, 3 + 4 + 6, 1 + 3 + 4 + 6]) / 21.0
    torch.testing.assert_close(validity(hand_built_cache(), scales, 0.1), expected)


def test_undefined_depth_of_absent_objects_is_ignored():
    cache = hand_built_cache()
    # a renderer may report 0/0 depth where an object has no accumulation
    cache.depth[cache.acc == 0] = float("nan")
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 6.0, 3.0]])
    torch.testing.assert_close(validity(cache, scales, 0.1), torch.tensor([11.0, 13.0]) / 21.0)
    winners = zbuffer_winner(cache.depth, cache.acc, scales, 0.1)
    assert winners[:, 2].tolist() == [2, 0] and winners[:, 5].tolist() == [2, 2]


def test_chunking_does_not_change_validity():
    cache = random_cache(200, 4, seed=1)
    scales = random_scales(300, 4, seed=2)
    plan = plan_validity(cache, 0.3)
    assert plan.multi, "the random cache should exercise rays with several competitors"
    whole = score_plan(plan, scales, chunk_elements=10**9)
    for chunk_elements in (1, 100, 5000):
        torch.testing.assert_close(score_plan(plan, scales, chunk_elements), whole, rtol=0, atol=1e-6)


def brute_force_winners(cache: SupervisionCache, scales: torch.Tensor, min_accumulation: float) -> torch.Tensor:
    winners = torch.empty(scales.shape[0], cache.num_rays, dtype=torch.long)
    for c in range(scales.shape[0]):
        for r in range(cache.num_rays):
            best, best_depth = None, None
            for k in range(cache.num_objects):
                if cache.acc[r, k] > min_accumulation:
                    depth = scales[c, k] * cache.depth[r, k]
                    if best is None or depth < best_depth:
                        best, best_depth = k, depth
            if best is None:
                best = max(range(cache.num_objects), key=lambda k: cache.acc[r, k])
            winners[c, r] = best
    return winners


def test_against_brute_force():
    cache = random_cache(11, 4, seed=3)
    scales = random_scales(7, 4, seed=4)
    winners = brute_force_winners(cache, scales, 0.3)
    assert torch.equal(zbuffer_winner(cache.depth, cache.acc, scales, 0.3), winners)
    expected = ((winners == cache.label) * cache.weight).sum(1) / cache.weight.sum()
    torch.testing.assert_close(validity(cache, scales, 0.3), expected)


@pytest.mark.parametrize("num_objects", [1, 2, 3, 5])
def test_validity_matches_zbuffer_on_larger_random_caches(num_objects):
    cache = random_cache(500, num_objects, seed=5)
    scales = random_scales(64, num_objects, seed=6)
    won = zbuffer_winner(cache.depth, cache.acc, scales, 0.3) == cache.label
    expected = (won * cache.weight).sum(1) / cache.weight.sum()
    torch.testing.assert_close(validity(cache, scales, 0.3, chunk_elements=1000), expected)


def test_background_only_scene_is_always_valid():
    cache = random_cache(20, 1, seed=7)
    assert validity(cache, torch.ones(3, 1), 0.3).tolist() == [1.0, 1.0, 1.0]


def test_no_supervision_contradicts_nothing():
    empty = SupervisionCache(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert validity(empty, torch.ones(2, 3), 0.1).tolist() == [1.0, 1.0]


def test_cache_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        SupervisionCache(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([0, -1]), torch.ones(2))


def test_soft_zbuffer_normalises_and_hardens_with_beta():
    cache = random_cache(50, 4, seed=8)
    acc = cache.acc.clamp_min(1e-3)
    scales = random_scales(6, 4, seed=9)
    soft = soft_zbuffer(cache.depth, acc, scales, beta=1.0, depth_unit=5.0)
    assert soft.shape == (6, 50, 4)
    torch.testing.assert_close(soft.sum(-1), torch.ones(6, 50))
    hard = zbuffer_winner(cache.depth, acc, scales, 0.0)
    sharp = soft_zbuffer(cache.depth, acc, scales, beta=1e5, depth_unit=5.0)
    assert torch.equal(sharp.argmax(-1), hard)
    assert sharp.max(-1).values.min() > 0.99


def test_soft_zbuffer_without_depth_preference_follows_accumulation():
    acc = torch.tensor([[0.2, 0.6, 0.2]])
    soft = soft_zbuffer(PLANES, acc, torch.ones(1, 3), beta=0.0, depth_unit=10.0)
    torch.testing.assert_close(soft[0, 0], acc[0])
