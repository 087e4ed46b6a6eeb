"""A preview image of a processed scene: per sampled frame, all masks, then each object's mask and keypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from osn_nerfstudio.data.scene_format import Keypoints, write_rgb

PALETTE = np.array(
    [[90, 90, 90], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60]],
    dtype=np.float64,
)
HEADER = 18
"""Pixels of the title row."""


def object_colour(k: int) -> np.ndarray:
    return PALETTE[k % len(PALETTE)]


def _zoom(image: np.ndarray, zoom: int) -> np.ndarray:
    return cv2.resize(image, (image.shape[1] * zoom, image.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)


def _all_masks(rgb: np.ndarray, labels: np.ndarray, zoom: int) -> np.ndarray:
    colours = np.stack([object_colour(int(k)) for k in np.clip(labels, 0, None).ravel()]).reshape(*labels.shape, 3)
    return _zoom((0.45 * rgb + 0.55 * colours).astype(np.uint8), zoom)


def _object_view(
    rgb: np.ndarray, labels: np.ndarray, k: int, uv: np.ndarray, depth: np.ndarray, zoom: int
) -> np.ndarray:
    """The frame dimmed outside object k's mask, with its keypoints coloured by depth (turbo: near red, far blue)."""
    inside = (labels == k)[..., None]
    view = _zoom(np.where(inside, rgb, 0.3 * rgb).astype(np.uint8), zoom)
    if len(depth):
        span = np.ptp(depth) or 1.0
        shades = cv2.applyColorMap(
            (255 * (1 - (depth - depth.min()) / span)).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO
        )
        for (u, v), bgr in zip(uv * zoom, shades[:, 0]):
            cv2.circle(view, (int(u), int(v)), max(1, zoom // 2), tuple(int(c) for c in bgr[::-1]), -1)
    return view


def _title(width: int, text: str, colour: np.ndarray) -> np.ndarray:
    header = np.full((HEADER, width, 3), 255, dtype=np.uint8)
    cv2.putText(
        header, text, (3, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, tuple(int(c) for c in colour), 1, cv2.LINE_AA
    )
    return header


def preview_image(
    images: np.ndarray, labels: np.ndarray, keypoints: Keypoints, names: Sequence[str], num_rows: int = 4
) -> np.ndarray:
    """[rows * h + header, (K + 1) * w, 3] uint8 preview of frames evenly spread over the video."""
    num_frames, height, width = labels.shape
    zoom = max(1, int(np.ceil(160 / width)))
    frames = np.unique(np.linspace(0, num_frames - 1, min(num_rows, num_frames)).round().astype(int))
    titles = [_title(width * zoom, "masks", np.zeros(3))]
    titles += [_title(width * zoom, f"{k} {name}", object_colour(k) * 0.8) for k, name in enumerate(names)]
    rows = [np.concatenate(titles, axis=1)]
    for v in frames:
        tiles = [_all_masks(images[v], labels[v], zoom)]
        for k in range(len(names)):
            rows_k = (keypoints.frame == v) & (keypoints.object_id == k)
            tiles.append(_object_view(images[v], labels[v], k, keypoints.uv[rows_k], keypoints.depth[rows_k], zoom))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(
    path: Path, images: np.ndarray, labels: np.ndarray, keypoints: Keypoints, names: Sequence[str]
) -> None:
    write_rgb(path, preview_image(images, labels, keypoints, names))
