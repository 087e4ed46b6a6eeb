"""Image, depth and segmentation metrics (definitions in docs/metrics.md). Pure torch.

Every function takes one image (no batch dimension) and an optional boolean ``valid`` mask of the pixels
to score; pixels outside it are ignored.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _valid(shape, valid: Optional[Tensor], device) -> Tensor:
    return torch.ones(shape, dtype=torch.bool, device=device) if valid is None else valid.reshape(shape).bool()


def psnr(prediction: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"], valid: Optional[Bool[Tensor, "H W"]] = None) -> float:
    """10 log10(1 / MSE) over the valid pixels, colours in [0, 1]."""
    mask = _valid(prediction.shape[:2], valid, prediction.device)
    mse = (prediction - target).pow(2)[mask].mean()
    return float(-10.0 * torch.log10(mse.clamp_min(1e-10)))


def median_aligned_depth_errors(
    prediction: Float[Tensor, "H W"], target: Float[Tensor, "H W"], valid: Optional[Bool[Tensor, "H W"]] = None
) -> Dict[str, float]:
    """Depth errors after scaling the prediction by median(target) / median(prediction).

    ``abs_rel`` = mean |p - t| / t and ``rmse`` = sqrt(mean (p - t)^2), over valid pixels with t > 0.
    """
    mask = _valid(prediction.shape, valid, prediction.device) & (target > 0) & torch.isfinite(target)
    p, t = prediction[mask].double(), target[mask].double()
    p = p * (t.median() / p.median().clamp_min(1e-12))
    return {"abs_rel": float(((p - t).abs() / t).mean()), "rmse": float((p - t).pow(2).mean().sqrt())}


def mean_iou(
    prediction: Int[Tensor, "H W"], target: Int[Tensor, "H W"], num_classes: int, valid: Optional[Bool[Tensor, "H W"]] = None
) -> float:
    """Mean over the classes present in the target (among valid pixels with target >= 0) of |P ∩ T| / |P ∪ T|."""
    mask = _valid(prediction.shape, valid, prediction.device) & (target >= 0)
    p, t = prediction[mask], target[mask]
    ious = []
    for k in range(num_classes):
        in_target = t == k
        if not in_target.any():
            continue
        in_prediction = p == k
        union = (in_target | in_prediction).sum()
        ious.append(float((in_target & in_prediction).sum()) / float(union))
    return sum(ious) / len(ious) if ious else float("nan")
