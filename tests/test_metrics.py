"""Metrics against hand-computed values."""

import math

import pytest
import torch

from osn_nerfstudio.core.metrics import mean_iou, median_aligned_depth_errors, psnr


def test_psnr_hand_computed():
    target = torch.zeros(2, 2, 3)
    prediction = torch.zeros(2, 2, 3)
    prediction[0, 0] = 0.1  # mse = 3 * 0.01 / 12 = 0.0025
    assert psnr(prediction, target) == pytest.approx(-10 * math.log10(0.0025), rel=1e-5)
    valid = torch.tensor([[False, True], [True, True]])
    assert psnr(prediction, target, valid) == pytest.approx(100.0)  # error only on the masked pixel -> clamp


def test_depth_errors_are_scale_free_after_median_alignment():
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = no ground truth
    exact = median_aligned_depth_errors(target * 7.0, target)
    assert exact["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    prediction = torch.tensor([[1.0, 2.0], [6.0, 5.0]])  # median ratio 1 on valid pixels
    errors = median_aligned_depth_errors(prediction, target)
    assert errors["abs_rel"] == pytest.approx((0 + 0 + 2 / 4) / 3)
    assert errors["rmse"] == pytest.approx(math.sqrt(4 / 3))


def test_mean_iou_hand_computed():
    target = torch.tensor([[0, 0, 1], [1, 2, -1]])
    prediction = torch.tensor([[0, 1, 1], [1, 2, 2]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2: inter 1, union 1 (the -1 pixel is ignored)
    assert mean_iou(prediction, target, 3) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
