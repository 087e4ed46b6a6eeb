"""Metrics against hand-computed values (definitions in docs/metrics.md)."""

import math

import pytest
import torch

from osn_nerfstudio.core import metrics
from osn_nerfstudio.core.metrics import (
    load_lpips,
    lpips,
    mean_iou,
    median,
    median_aligned_depth_errors,
    panoptic_quality,
    psnr,
    ssim,
)

C1 = 0.01**2  # SSIM's luminance constant at data range 1


def test_psnr_hand_computed():
    target = torch.zeros(2, 2, 3)
    prediction = torch.zeros(2, 2, 3)
    prediction[0, 0] = 0.1  # mse = 3 * 0.01 / 12 = 0.0025
    assert psnr(prediction, target) == pytest.approx(-10 * math.log10(0.0025), rel=1e-5)
    valid = torch.tensor([[False, True], [True, True]])
    assert psnr(prediction, target, valid) == pytest.approx(100.0)  # error only on the masked pixel -> clamp
    first_row = torch.tensor([[True, True], [False, False]])  # mse = 3 * 0.01 / 6
    assert psnr(prediction, target, first_row) == pytest.approx(-10 * math.log10(0.005), rel=1e-5)
    assert math.isnan(psnr(prediction, target, torch.zeros(2, 2, dtype=torch.bool)))


def test_ssim_of_constant_images_is_the_luminance_term():
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) at every pixel (the contrast term is C2 / C2)
    a, b = 0.2, 0.6
    value = ssim(torch.full((16, 16, 3), a), torch.full((16, 16, 3), b))
    assert value == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-6)  # 0.2, 0.6 in float32


def test_ssim_without_mask_is_torchmetrics_and_mask_selects_pixels():
    from torchmetrics.functional.image import structural_similarity_index_measure

    generator = torch.Generator().manual_seed(0)
    noisy = torch.rand(24, 32, 3, generator=generator, dtype=torch.float64)
    smooth = noisy * 0.5 + 0.25
    reference = structural_similarity_index_measure(
        noisy.permute(2, 0, 1)[None], smooth.permute(2, 0, 1)[None], data_range=1.0
    )
    assert ssim(noisy, smooth) == pytest.approx(float(reference), rel=1e-9)

    # left half identical, right half a constant 0.2 against 0.6; the window (radius 5) of columns <= 10 and
    # >= 22 sees only one half
    prediction = torch.full((32, 32, 3), 0.5)
    target = prediction.clone()
    prediction[:, 16:], target[:, 16:] = 0.2, 0.6
    left, right = torch.zeros(32, 32, dtype=torch.bool), torch.zeros(32, 32, dtype=torch.bool)
    left[:, :10], right[:, 22:] = True, True
    assert ssim(prediction, target, left) == pytest.approx(1.0, abs=1e-9)
    assert ssim(prediction, target, right) == pytest.approx((0.24 + C1) / (0.40 + C1), rel=1e-6)
    assert ssim(prediction, target) < ssim(prediction, target, right) < 1.0  # the seam's windows score lower


def test_lpips_blacks_out_unscored_pixels_in_both_images():
    seen = []

    def mean_absolute_difference(p, t):  # a stand-in network: checks the layout, returns a known number
        seen.append(p.shape)
        return (p - t).abs().mean()

    prediction, target = torch.ones(2, 2, 3), torch.zeros(2, 2, 3)
    assert lpips(prediction, target, mean_absolute_difference) == pytest.approx(1.0)
    one_pixel = torch.tensor([[True, False], [False, False]])
    assert lpips(prediction, target, mean_absolute_difference, one_pixel) == pytest.approx(3 / 12)
    assert seen == [torch.Size([1, 3, 2, 2])] * 2


def test_lpips_is_skipped_with_a_note_when_weights_are_missing(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS must never download its weights")

    # the downloader itself: torchvision binds load_state_dict_from_url at import, download_url_to_file is looked up
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    load_lpips.cache_clear()
    try:
        network, note = load_lpips()
    finally:
        load_lpips.cache_clear()
    assert network is None
    assert note.startswith("LPIPS skipped") and str(tmp_path / "checkpoints") in note
    assert metrics.lpips_weights_path().parent == tmp_path / "checkpoints"


def test_median_of_odd_and_even_counts():
    assert float(median(torch.tensor([3.0, 1.0, 2.0]))) == 2.0
    assert float(median(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == 2.5


def test_depth_errors_are_scale_free_after_median_alignment():
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = no ground truth
    exact = median_aligned_depth_errors(target * 7.0, target)
    assert exact["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    prediction = torch.tensor([[1.0, 2.0], [6.0, 5.0]])  # median ratio 1 on valid pixels
    errors = median_aligned_depth_errors(prediction, target)
    assert errors["abs_rel"] == pytest.approx((0 + 0 + 2 / 4) / 3)
    assert errors["rmse"] == pytest.approx(math.sqrt(4 / 3))


def test_median_mad_aligned_depth_errors_hand_computed():
    # valid t = (1, 2, 3): median 2, mean |t - 2| = 2/3, t^ = (-1.5, 0, 1.5)
    # valid p = (2, 3, 7): median 3, mean |p - 3| = 5/3, p^ = (-0.6, 0, 2.4); p^ - t^ = (0.9, 0, 0.9)
    target = torch.tensor([[1.0, 2.0], [3.0, float("inf")]])  # inf = no ground truth
    prediction = torch.tensor([[2.0, 3.0], [7.0, 100.0]])
    errors = median_aligned_depth_errors(prediction, target)
    assert errors["mad_mae"] == pytest.approx(0.6)
    assert errors["mad_mse"] == pytest.approx(0.54)
    # median scaling (ratio 2/3): p' = (4/3, 2, 14/3)
    assert errors["abs_rel"] == pytest.approx((1 / 3 + 0 + (5 / 3) / 3) / 3)


def test_median_mad_alignment_removes_scale_and_shift_but_median_scaling_only_scale():
    target = torch.tensor([[1.0, 2.0, 3.0], [5.0, 8.0, 13.0]])
    errors = median_aligned_depth_errors(3.0 * target + 5.0, target)
    assert errors["mad_mae"] == pytest.approx(0.0, abs=1e-12)
    assert errors["mad_mse"] == pytest.approx(0.0, abs=1e-12)
    assert errors["abs_rel"] > 0.1


def test_depth_errors_on_the_scored_pixels_only():
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    prediction = torch.tensor([[2.0, 3.0], [7.0, 50.0]])
    covisible = torch.tensor([[True, True], [True, False]])  # drops the outlier: same as the hand-computed case
    assert median_aligned_depth_errors(prediction, target, covisible)["mad_mae"] == pytest.approx(0.6)
    none = median_aligned_depth_errors(prediction, target, torch.zeros(2, 2, dtype=torch.bool))
    assert all(math.isnan(v) for v in none.values())


def test_mean_iou_hand_computed():
    target = torch.tensor([[0, 0, 1], [1, 2, -1]])
    prediction = torch.tensor([[0, 1, 1], [1, 2, 2]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2: inter 1, union 1 (the -1 pixel is ignored)
    assert mean_iou(prediction, target, 3) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    first_row = torch.tensor([[True, True, True], [False, False, False]])
    # class 0: inter 1, union 2; class 1: inter 1, union 2; class 2 absent from the scored target
    assert mean_iou(prediction, target, 3, first_row) == pytest.approx(0.5)


TARGET = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, -1]])
PREDICTION = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1], [1, 2, 0, 3]])


def test_panoptic_quality_hand_computed():
    # object 0: |P|=6, |T|=4, inter 4, IoU 2/3 -> TP; object 1: |P|=4, |T|=4, inter 3, IoU 3/5 -> TP;
    # object 2: P = {(2,1)}, T = 3 pixels, IoU 1/3 -> FN and FP; object 3 is predicted only on the ignored pixel.
    expected = (2 / 3 + 3 / 5) / (2 + 1 / 2 + 1 / 2)
    assert panoptic_quality(PREDICTION, TARGET, 4) == pytest.approx(expected)


def test_panoptic_quality_counts_unmatched_segments_and_needs_iou_above_half():
    target = torch.tensor([[0, 0, 1, 1]])
    # object 0: IoU 2/3 -> TP; object 1 not predicted -> FN; object 2 predicted but absent -> FP
    prediction = torch.tensor([[0, 0, 0, 2]])
    assert panoptic_quality(prediction, target, 3) == pytest.approx((2 / 3) / (1 + 1 / 2 + 1 / 2))
    half = torch.tensor([[0, 1, 1, 1]])  # object 0: IoU 1/2 -> FN + FP; object 1: IoU 2/3 -> TP
    assert panoptic_quality(half, target, 3) == pytest.approx((2 / 3) / (1 + 1 / 2 + 1 / 2))
    assert panoptic_quality(target, target, 3) == pytest.approx(1.0)
    assert math.isnan(panoptic_quality(prediction, torch.full_like(target, -1), 3))


def test_panoptic_quality_on_covisible_pixels():
    first_two_rows = torch.zeros(3, 4, dtype=torch.bool)
    first_two_rows[:2] = True
    # object 0: |P|=5, |T|=4, IoU 4/5; object 1: |P|=3, |T|=4, IoU 3/4; object 2 is not in the scored pixels
    assert panoptic_quality(PREDICTION, TARGET, 4, first_two_rows) == pytest.approx((0.8 + 0.75) / 2)


def test_lpips_with_torchmetrics_network_when_weights_are_on_disk(tmp_path, monkeypatch):
    """The real computing path: torchmetrics' LPIPS loads AlexNet from the hub cache (never the network). The weights
    here are a randomly initialised AlexNet (no ImageNet weights can be downloaded on the test machines), so the
    values are not LPIPS's, but everything from loading to the masked score runs as it does with the real file."""
    import torchvision

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS must never download its weights")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    path = metrics.lpips_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    load_lpips.cache_clear()
    try:
        network, note = load_lpips()
    finally:
        load_lpips.cache_clear()
    assert network is not None and str(path) in note
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(32, 40, 3, generator=generator)
    noisy = (target + 0.3 * torch.randn(32, 40, 3, generator=generator)).clamp(0, 1)
    assert lpips(target, target, network) == pytest.approx(0.0, abs=1e-6)
    different = lpips(noisy, target, network)
    assert different > 0
    # unscored pixels are blacked out in both images: differences there do not count
    left = torch.zeros(32, 40, dtype=torch.bool)
    left[:, :20] = True
    only_right_differs = torch.where(left[..., None], target, noisy)
    assert lpips(only_right_differs, target, network, left) == pytest.approx(0.0, abs=1e-6)
    assert lpips(only_right_differs, target, network, ~left) > 0
