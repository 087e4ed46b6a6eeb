"""Stage 3: point tracks, the optical flow chained from frame to frame, each labelled by its object.

Points are seeded on a regular grid inside every object's mask (away from mask boundaries, where flow
mixes two motions) and carried forward by the flow. A track ends where its flow fails the
forward-backward check, leaves the image, or leaves its object's mask; new tracks are seeded wherever
the grid has none. Each step is refined with Lucas-Kanade (see ``TrackConfig.refine``). Tracks give
per-object structure from motion its correspondences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import cv2
import numpy as np

from osn_nerfstudio.process.common import progress_bar
from osn_nerfstudio.process.flow import FlowConfig, VideoFlow, consistent, sample

NO_OBJECT = -1


@dataclass
class TrackConfig:
    """How tracks are seeded and kept."""

    spacing: int = 2
    """Smallest grid spacing (pixels) of seeded points: at most one live track per grid cell."""
    max_points_per_frame: int = 400
    """An object's grid is coarsened so that about this many of its tracks are live in a frame (the
    background would otherwise give structure from motion far more points than it needs)."""
    min_length: int = 3
    """Tracks seen in fewer frames are dropped (two-frame tracks constrain structure from motion little)."""
    mask_margin: int = 1
    """Tracks stay this many pixels inside their object's mask."""
    refine: bool = True
    """Refine each step of a track with pyramidal Lucas-Kanade started from the dense flow: dense flow is
    smooth and biased at the sub-pixel level, and chained bias bends the recovered geometry."""
    refine_window: int = 7
    """Lucas-Kanade window size (pixels)."""
    max_refinement: float = 1.0
    """A refinement moving the point further than this (pixels) from the flow's guess ends the track."""


@dataclass
class Tracks:
    """Observations of all tracks, one row per (track, frame)."""

    track: np.ndarray
    """[M] int: track index of each observation."""
    frame: np.ndarray
    """[M] int: frame of each observation."""
    uv: np.ndarray
    """[M, 2] float: pixel position (top-left pixel centre at (0.5, 0.5))."""
    track_object: np.ndarray
    """[T] int: the object each track belongs to."""

    @property
    def object_id(self) -> np.ndarray:
        """[M] the object of each observation."""
        return self.track_object[self.track]

    @property
    def num_tracks(self) -> int:
        return int(self.track_object.shape[0])

    def observations(self, rows: np.ndarray) -> "Tracks":
        """The observations ``rows`` ([M] bool) of these tracks, track indices unchanged."""
        return Tracks(track=self.track[rows], frame=self.frame[rows], uv=self.uv[rows], track_object=self.track_object)

    def lengths(self) -> np.ndarray:
        """[T] number of frames each track is seen in."""
        return np.bincount(self.track, minlength=self.num_tracks)


def interior_labels(labels: np.ndarray, margin: int, ignore_label: int) -> np.ndarray:
    """[H, W] labels where the (2 margin + 1)^2 neighbourhood holds one object, ``NO_OBJECT`` elsewhere."""
    out = np.where(labels == ignore_label, NO_OBJECT, labels).astype(np.int64)
    if margin > 0:
        kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
        values = out.astype(np.float32)
        low = cv2.erode(values, kernel, borderType=cv2.BORDER_REPLICATE)
        high = cv2.dilate(values, kernel, borderType=cv2.BORDER_REPLICATE)
        out = np.where(low == high, out, NO_OBJECT)
    return out


def _label_at(interior: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Interior label of the pixel containing each position; ``NO_OBJECT`` outside the image."""
    height, width = interior.shape
    cols, rows = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    out = np.full(uv.shape[0], NO_OBJECT, dtype=np.int64)
    out[inside] = interior[rows[inside], cols[inside]]
    return out


def object_spacings(interiors: List[np.ndarray], config: TrackConfig) -> Dict[int, int]:
    """Seed grid spacing of every object: ``config.spacing``, coarser for objects with large masks."""
    stacked = np.stack(interiors)
    spacings = {}
    for k in np.unique(stacked[stacked != NO_OBJECT]):
        areas = (stacked == k).sum(axis=(1, 2))
        mean_area = areas[areas > 0].mean()
        spacings[int(k)] = max(config.spacing, int(round(np.sqrt(mean_area / config.max_points_per_frame))))
    return spacings


def _seeds(interior: np.ndarray, live_uv: np.ndarray, live_object: np.ndarray, spacings: Dict[int, int]):
    """Grid positions [S, 2] and objects [S] of new tracks: object k's grid points on its interior in grid
    cells that hold none of its live tracks."""
    height, width = interior.shape
    positions, objects = [np.zeros((0, 2))], [np.zeros(0, dtype=np.int64)]
    for k, spacing in spacings.items():
        rows, cols = np.mgrid[spacing // 2 : height : spacing, spacing // 2 : width : spacing]
        rows, cols = rows.ravel(), cols.ravel()
        free = interior[rows, cols] == k
        occupied = np.zeros((-(-height // spacing), -(-width // spacing)), dtype=bool)
        cells = np.floor(live_uv[live_object == k] / spacing).astype(np.int64)
        occupied[np.clip(cells[:, 1], 0, occupied.shape[0] - 1), np.clip(cells[:, 0], 0, occupied.shape[1] - 1)] = True
        free &= ~occupied[rows // spacing, cols // spacing]
        positions.append(np.stack([cols[free], rows[free]], axis=1) + 0.5)
        objects.append(np.full(int(free.sum()), k, dtype=np.int64))
    return np.concatenate(positions), np.concatenate(objects)


def build_tracks(
    images: np.ndarray,
    flow: VideoFlow,
    labels: np.ndarray,
    ignore_label: int,
    flow_config: FlowConfig,
    config: TrackConfig,
) -> Tracks:
    """Chain ``flow`` into tracks through the [F, H, W, 3] frames and their [F, H, W] object label maps."""
    num_frames = labels.shape[0]
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images]
    interiors = [interior_labels(labels[v], config.mask_margin, ignore_label) for v in range(num_frames)]
    spacings = object_spacings(interiors, config)
    live_uv, live_track = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    track_object = np.zeros(0, dtype=np.int64)
    rows_track, rows_frame, rows_uv = [], [], []
    with progress_bar("Chaining tracks", num_frames) as advance:
        for v in range(num_frames):
            seeds, seed_objects = _seeds(interiors[v], live_uv, track_object[live_track], spacings)
            live_uv = np.concatenate([live_uv, seeds])
            live_track = np.concatenate([live_track, len(track_object) + np.arange(len(seeds))])
            track_object = np.concatenate([track_object, seed_objects])
            rows_track.append(live_track)
            rows_frame.append(np.full(len(live_track), v))
            rows_uv.append(live_uv)
            if v + 1 < num_frames and len(live_uv):
                moved, keep = _step(grey[v], grey[v + 1], flow, v, live_uv, flow_config, config)
                keep &= _label_at(interiors[v + 1], moved) == track_object[live_track]
                live_uv, live_track = moved[keep], live_track[keep]
            advance()
    tracks = Tracks(
        track=np.concatenate(rows_track),
        frame=np.concatenate(rows_frame),
        uv=np.concatenate(rows_uv),
        track_object=track_object,
    )
    return _drop_short(tracks, config.min_length)


def _step(grey, next_grey, flow: VideoFlow, v: int, uv: np.ndarray, flow_config: FlowConfig, config: TrackConfig):
    """Positions [N, 2] of points ``uv`` in frame v+1, and whether each may continue its track."""
    forward = sample(flow.forward[v], uv)
    moved = uv + forward
    keep = consistent(forward, sample(flow.backward[v], moved), flow_config)
    if config.refine:
        moved, converged = _refine(grey, next_grey, uv, moved, config)
        keep &= converged & consistent(moved - uv, sample(flow.backward[v], moved), flow_config)
    return moved, keep


def _refine(grey: np.ndarray, next_grey: np.ndarray, uv: np.ndarray, guess: np.ndarray, config: TrackConfig):
    """Lucas-Kanade positions [N, 2] in the next frame, started at ``guess``, and whether each converged near it."""
    start = (uv - 0.5).astype(np.float32).reshape(-1, 1, 2)  # OpenCV puts pixel centres at integers
    found, status, _ = cv2.calcOpticalFlowPyrLK(
        grey,
        next_grey,
        start,
        (guess - 0.5).astype(np.float32).reshape(-1, 1, 2),
        winSize=(config.refine_window, config.refine_window),
        maxLevel=1,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
    )
    refined = found.reshape(-1, 2).astype(np.float64) + 0.5
    return refined, (status.ravel() == 1) & (np.linalg.norm(refined - guess, axis=1) <= config.max_refinement)


def _drop_short(tracks: Tracks, min_length: int) -> Tracks:
    """Tracks seen in at least ``min_length`` frames, renumbered 0..T-1."""
    long_enough = tracks.lengths() >= min_length
    new_index = np.cumsum(long_enough) - 1
    rows = long_enough[tracks.track]
    return Tracks(
        track=new_index[tracks.track[rows]],
        frame=tracks.frame[rows],
        uv=tracks.uv[rows],
        track_object=tracks.track_object[long_enough],
    )
