"""Image, depth and segmentation metrics (definitions in docs/metrics.md). Pure torch.

Every function takes one image (no batch dimension) and an optional boolean ``valid`` mask of the pixels
to score (e.g. a co-visibility mask); pixels outside it are ignored. A metric with nothing to score returns
NaN.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

IGNORE_LABEL = -1
"""Ground-truth object id of pixels whose object is unknown."""

PerceptualNetwork = Callable[[Float[Tensor, "1 3 H W"], Float[Tensor, "1 3 H W"]], Tensor]
"""Maps two images with colours in [0, 1] to their perceptual distance (a scalar tensor)."""


def _valid(shape, valid: Optional[Tensor], device) -> Tensor:
    return (
        torch.ones(shape, dtype=torch.bool, device=device) if valid is None else valid.reshape(shape).bool().to(device)
    )


def median(values: Float[Tensor, " N"]) -> Tensor:
    """The middle value; for an even count, the mean of the two middle values (as numpy's median)."""
    ordered = values.sort().values
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


# ---------------------------------------------------------------- colour


def psnr(
    prediction: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"], valid: Optional[Bool[Tensor, "H W"]] = None
) -> float:
    """10 log10(1 / MSE) over the valid pixels, colours in [0, 1] (MSE clamped at 1e-10)."""
    mask = _valid(prediction.shape[:2], valid, prediction.device)
    if not mask.any():
        return float("nan")
    mse = (prediction - target).pow(2)[mask].mean()
    return float(-10.0 * torch.log10(mse.clamp_min(1e-10)))


def ssim(
    prediction: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"], valid: Optional[Bool[Tensor, "H W"]] = None
) -> float:
    """Mean over the valid pixels of torchmetrics' SSIM map (Gaussian window 11, sigma 1.5, data range 1,
    channels averaged), computed on the whole images in float64 (float32 loses about 1e-4 to cancellation in
    the variances). Without a mask this is torchmetrics' SSIM."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    mask = _valid(prediction.shape[:2], valid, prediction.device)
    if not mask.any():
        return float("nan")
    _, ssim_map = structural_similarity_index_measure(
        prediction.permute(2, 0, 1)[None].double(),
        target.permute(2, 0, 1)[None].double(),
        data_range=1.0,
        return_full_image=True,
    )
    return float(ssim_map[0].mean(0)[mask].mean())


def lpips(
    prediction: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    network: PerceptualNetwork,
    valid: Optional[Bool[Tensor, "H W"]] = None,
) -> float:
    """LPIPS of the two images given by ``network`` (see ``load_lpips``); pixels outside ``valid`` are set to
    black in both images first (a perceptual network cannot skip pixels)."""
    mask = _valid(prediction.shape[:2], valid, prediction.device)
    if not mask.any():
        return float("nan")
    keep = mask[..., None].to(prediction.dtype)

    def as_batch(image: Tensor) -> Tensor:
        return (image * keep).permute(2, 0, 1)[None].float().clamp(0, 1)

    with torch.no_grad():
        return float(network(as_batch(prediction), as_batch(target)))


def lpips_weights_path(net_type: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet weights of the LPIPS backbone (the torch hub cache)."""
    import torchvision

    weights = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}[net_type]
    url = getattr(torchvision.models, weights).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


@functools.lru_cache(maxsize=None)
def load_lpips(net_type: str = "alex") -> Tuple[Optional[nn.Module], str]:
    """torchmetrics' LPIPS network (inputs in [0, 1]) when its backbone weights are already on disk, else None.

    Never downloads. Returns the network (or None) and a note saying which weights it uses, or why LPIPS is
    skipped and how to enable it.
    """
    path = lpips_weights_path(net_type)
    if not path.is_file():
        return None, (
            f"LPIPS skipped: the {net_type} backbone weights are not in the torch hub cache ({path}). "
            "Put the file there (e.g. run torchmetrics' LearnedPerceptualImagePatchSimilarity once with network "
            "access) to report it."
        )
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    network = LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=True).eval()
    return network, f"LPIPS with torchmetrics' {net_type} network ({path})"


# ---------------------------------------------------------------- depth


def median_aligned_depth_errors(
    prediction: Float[Tensor, "H W"], target: Float[Tensor, "H W"], valid: Optional[Bool[Tensor, "H W"]] = None
) -> Dict[str, float]:
    """Depth errors over the valid pixels with ground truth (t > 0, finite) and a finite prediction.

    * ``abs_rel`` = mean |p' - t| / t and ``rmse`` = sqrt(mean (p' - t)^2), with the prediction scaled to
      p' = p · median(t) / median(p);
    * ``mad_mae`` = mean |p̂ - t̂| and ``mad_mse`` = mean (p̂ - t̂)^2, with each map normalised by its median and
      its mean absolute deviation from the median: x̂ = (x - median(x)) / mean |x - median(x)|.
    """
    mask = _valid(prediction.shape, valid, prediction.device) & (target > 0) & torch.isfinite(target)
    mask &= torch.isfinite(prediction)
    if not mask.any():
        return {key: float("nan") for key in ("abs_rel", "rmse", "mad_mae", "mad_mse")}
    p, t = prediction[mask].double(), target[mask].double()
    scaled = p * (median(t) / median(p).clamp_min(1e-12))
    p_hat, t_hat = median_mad_normalise(p), median_mad_normalise(t)
    return {
        "abs_rel": float(((scaled - t).abs() / t).mean()),
        "rmse": float((scaled - t).pow(2).mean().sqrt()),
        "mad_mae": float((p_hat - t_hat).abs().mean()),
        "mad_mse": float((p_hat - t_hat).pow(2).mean()),
    }


def median_mad_normalise(values: Float[Tensor, " N"]) -> Float[Tensor, " N"]:
    """(x - median(x)) / mean |x - median(x)| (the deviation clamped at 1e-12: a constant map becomes 0)."""
    centred = values - median(values)
    return centred / centred.abs().mean().clamp_min(1e-12)


# ---------------------------------------------------------------- segmentation


def _scored_labels(prediction: Tensor, target: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    mask = _valid(prediction.shape, valid, prediction.device) & (target.to(prediction.device) != IGNORE_LABEL)
    return prediction[mask], target.to(prediction.device)[mask]


def mean_iou(
    prediction: Int[Tensor, "H W"],
    target: Int[Tensor, "H W"],
    num_classes: int,
    valid: Optional[Bool[Tensor, "H W"]] = None,
) -> float:
    """Mean over the objects present in the target (valid pixels, ignore label excluded) of |P ∩ T| / |P ∪ T|."""
    p, t = _scored_labels(prediction, target, valid)
    ious = []
    for k in range(num_classes):
        in_target = t == k
        if not in_target.any():
            continue
        in_prediction = p == k
        ious.append(float((in_target & in_prediction).sum()) / float((in_target | in_prediction).sum()))
    return sum(ious) / len(ious) if ious else float("nan")


def panoptic_quality(
    prediction: Int[Tensor, "H W"],
    target: Int[Tensor, "H W"],
    num_classes: int,
    valid: Optional[Bool[Tensor, "H W"]] = None,
) -> float:
    """PQ = Σ IoU(TP) / (TP + FP/2 + FN/2), each object id (background included) one segment.

    Segments are the valid, non-ignored pixels of each id in the prediction and in the target; the predicted
    and true segments of an id match (a TP) when their IoU > 0.5; an unmatched true segment is a FN, an
    unmatched predicted one a FP.
    """
    p, t = _scored_labels(prediction, target, valid)
    matched_iou, tp, fp, fn = 0.0, 0, 0, 0
    for k in range(num_classes):
        in_target, in_prediction = t == k, p == k
        has_target, has_prediction = bool(in_target.any()), bool(in_prediction.any())
        iou = float((in_target & in_prediction).sum()) / max(float((in_target | in_prediction).sum()), 1.0)
        if has_target and has_prediction and iou > 0.5:
            matched_iou, tp = matched_iou + iou, tp + 1
        else:
            fn, fp = fn + has_target, fp + has_prediction
    denominator = tp + fp / 2 + fn / 2
    return matched_iou / denominator if denominator > 0 else float("nan")
