"""Stage 2: dense optical flow between consecutive frames (OpenCV, no learned weights), both directions.

Flow arrays are [H, W, 2] (du, dv) in pixels, indexed by pixel row and column. ``sample`` reads them at
sub-pixel positions given in the scene's pixel convention (top-left pixel centre at (0.5, 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from osn_nerfstudio.process.common import progress_bar


@dataclass
class FlowConfig:
    """Dense optical flow settings."""

    method: Literal["dis", "farneback"] = "dis"
    """OpenCV's DIS (fast, robust) or Farnebäck (smoother, slower)."""
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """DIS quality preset."""
    dis_finest_scale: int = 0
    """Finest pyramid level DIS estimates (0: full resolution; OpenCV's presets stop at 1 or 2, too coarse
    for sub-pixel tracks in small frames)."""
    fb_threshold: float = 0.75
    """Largest forward-backward inconsistency |f(x) + b(x + f(x))| (pixels) of a trusted flow vector..."""
    fb_relative: float = 0.05
    """... plus this fraction of the flow's length (fast motion is less precise)."""


@dataclass
class VideoFlow:
    """Flow between every pair of consecutive frames."""

    forward: np.ndarray
    """[F-1, H, W, 2] flow from frame v to frame v+1."""
    backward: np.ndarray
    """[F-1, H, W, 2] flow from frame v+1 to frame v."""


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _estimator(config: FlowConfig):
    if config.method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 5, 5, 1.1, 0)
    preset = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }[config.dis_preset]
    dis = cv2.DISOpticalFlow_create(preset)
    dis.setFinestScale(config.dis_finest_scale)
    return lambda a, b: dis.calc(a, b, None)


def compute_flow(images: np.ndarray, config: FlowConfig) -> VideoFlow:
    """Forward and backward flow of every consecutive pair of [F, H, W, 3] uint8 frames."""
    estimate = _estimator(config)
    grey = [_grey(image) for image in images]
    forward, backward = [], []
    with progress_bar("Optical flow", len(grey) - 1) as advance:
        for a, b in zip(grey[:-1], grey[1:]):
            forward.append(estimate(a, b))
            backward.append(estimate(b, a))
            advance()
    return VideoFlow(forward=np.stack(forward).astype(np.float32), backward=np.stack(backward).astype(np.float32))


def sample(field: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples [N, C] of an [H, W, C] array at pixel positions ``uv`` [N, 2] (pixel centres at +0.5)."""
    coordinates = (uv - 0.5).astype(np.float32)
    map_x = np.ascontiguousarray(coordinates[:, 0]).reshape(-1, 1)
    map_y = np.ascontiguousarray(coordinates[:, 1]).reshape(-1, 1)
    out = cv2.remap(field.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(uv.shape[0], -1)


def consistent(forward: np.ndarray, backward_at_target: np.ndarray, config: FlowConfig) -> np.ndarray:
    """[N] whether forward vectors [N, 2] and the backward flow sampled where they land agree."""
    error = np.linalg.norm(forward + backward_at_target, axis=-1)
    return error <= config.fb_threshold + config.fb_relative * np.linalg.norm(forward, axis=-1)


def warp_labels(labels: np.ndarray, backward: np.ndarray, fill: int) -> np.ndarray:
    """Carry a label map of frame v forward to frame v+1 with the backward flow (v+1 -> v), nearest label.

    Pixels whose backward flow leaves the image get ``fill``.
    """
    height, width = labels.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = cols + backward[..., 0], rows + backward[..., 1]
    return cv2.remap(
        labels.astype(np.float32),
        map_x,
        map_y,
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(fill),
    ).astype(labels.dtype)
