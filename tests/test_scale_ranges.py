"""Scene bounds and scale ranges against hand-computed values."""

import pytest
import torch

from osn_nerfstudio.core.scale_ranges import SceneBounds, scale_ranges, scene_bounds


def test_scene_bounds_from_background_depths():
    depths = torch.tensor([2.0, 4.0, 6.0, 10.0], dtype=torch.float64)
    bounds = scene_bounds(depths, quantile=0.0, far_margin=0.1, near_fraction=0.05)
    assert bounds.far == pytest.approx(11.0)
    assert bounds.near == pytest.approx(0.55)


def test_quantile_ignores_outliers():
    depths = torch.cat([torch.full((99,), 5.0, dtype=torch.float64), torch.tensor([1000.0], dtype=torch.float64)])
    bounds = scene_bounds(depths, quantile=0.02, far_margin=0.0, near_fraction=0.1)
    assert bounds.far == pytest.approx(5.0)


def test_scale_ranges_keep_keypoints_inside_bounds():
    objects = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    depths = torch.tensor([3.0, 9.0, 0.5, 1.0, 2.0, 10.0, 20.0], dtype=torch.float64)
    bounds = SceneBounds(near=1.0, far=10.0)
    ranges = scale_ranges(objects, depths, 3, bounds, quantile=0.0)
    assert ranges[0].tolist() == [1.0, 1.0]
    # object 1: nearest keypoint 0.5 reaches near at s=2, farthest 2.0 reaches far at s=5
    assert ranges[1].tolist() == pytest.approx([2.0, 5.0])
    assert ranges[2].tolist() == pytest.approx([0.1, 0.5])
    for k in (1, 2):
        d = depths[objects == k]
        assert (ranges[k, 0] * d).min() == pytest.approx(bounds.near)
        assert (ranges[k, 1] * d).max() == pytest.approx(bounds.far)


def test_object_too_deep_for_the_scene_is_named():
    objects = torch.tensor([0, 1, 1])
    depths = torch.tensor([5.0, 1.0, 100.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="object 1"):
        scale_ranges(objects, depths, 2, SceneBounds(near=1.0, far=10.0), quantile=0.0)


def test_object_without_keypoints_is_rejected():
    with pytest.raises(ValueError, match="without keypoints"):
        scale_ranges(torch.tensor([0, 0]), torch.tensor([1.0, 2.0], dtype=torch.float64), 2, SceneBounds(1, 10), 0.0)
