"""Stage 3b: SIFT feature tracks inside each object's mask, beside the flow tracks of ``tracks.py``.

Chained flow drifts: on the indoor benchmark scene room-a the background's flow tracks alone gave keypoint depths
whose ratio to the truth falls from 1.02 at 0-3 m to 0.97 beyond 7 m (a 3.9 % spread). SIFT keypoints are
localised in each frame on their own and matched directly between frames, so they do not accumulate drift.

COLMAP's SIFT (pycolmap) runs once per frame on the whole image; a keypoint belongs to the object whose mask
interior (``tracks.interior_labels``) holds it. For every pair of frames at most ``max_pair_gap`` apart (every
pair of a video of at most ``exhaustive_frames`` frames), each object's keypoints are matched by mutual nearest
neighbour with Lowe's ratio test. Matches are chained into tracks (connected components); a component that holds
two keypoints of one frame is ambiguous and dropped. The result is a ``Tracks`` like the flow's, so structure from
motion verifies and uses both the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import cv2
import numpy as np
import pycolmap
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from osn_nerfstudio.process.common import progress_bar
from osn_nerfstudio.process.flow import VideoFlow, sample
from osn_nerfstudio.process.tracks import NO_OBJECT, Tracks


@dataclass
class FeatureConfig:
    """SIFT feature tracks inside each object's mask (COLMAP's SIFT through pycolmap)."""

    enabled: bool = False
    """Add SIFT feature tracks to the flow tracks (off: on room-a they cost 25 s and gained little, see
    benchmarks/PROCESS_DATA_RESULTS.md)."""
    max_features: int = 4096
    """Most SIFT keypoints per frame."""
    ratio: float = 0.8
    """Lowe's ratio test: a match's descriptor distance must be under this fraction of the second best's."""
    max_pair_gap: int = 12
    """Frames further apart than this are matched only in videos of at most ``exhaustive_frames`` frames."""
    exhaustive_frames: int = 0
    """Videos with at most this many frames match every pair of frames."""
    min_length: int = 3
    """Feature tracks seen in fewer frames are dropped."""
    guide_radius: float = 2.0
    """A match must land within this many pixels of where the chained optical flow carries the keypoint..."""
    guide_growth: float = 0.25
    """... plus this many per frame between the two (repeated texture, a checkered floor, otherwise mismatches)."""


@dataclass
class FrameFeatures:
    """SIFT keypoints of one frame."""

    uv: np.ndarray
    """[N, 2] positions (top-left pixel centre at (0.5, 0.5), COLMAP's convention too)."""
    descriptors: np.ndarray
    """[N, 128] float32, unit length."""
    object_id: np.ndarray
    """[N] the object whose mask interior holds the keypoint (``NO_OBJECT`` keypoints are not kept)."""


def extract_features(images: np.ndarray, interiors: List[np.ndarray], config: FeatureConfig) -> List[FrameFeatures]:
    """SIFT keypoints of the [F, H, W, 3] frames, each labelled by the [H, W] interior label map of its frame."""
    pycolmap.logging.minloglevel = 3  # COLMAP's log is not for the command's user
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    options.sift.max_num_features = config.max_features
    extractor = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)
    height, width = images.shape[1:3]
    features = []
    with progress_bar("SIFT features", len(images)) as advance:
        for image, interior in zip(images, interiors):
            keypoints, descriptors = extractor.extract_from_uint8_array(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
            uv = np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2)
            pixel = np.clip(np.floor(uv).astype(np.int64), 0, [width - 1, height - 1])
            object_id = interior[pixel[:, 1], pixel[:, 0]]
            keep = object_id != NO_OBJECT
            values = np.asarray(descriptors.data, dtype=np.float32).reshape(-1, 128)[keep]
            values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
            features.append(FrameFeatures(uv=uv[keep], descriptors=values, object_id=object_id[keep]))
            advance()
    return features


def mutual_matches(a: np.ndarray, b: np.ndarray, ratio: float, allowed: Optional[np.ndarray] = None) -> np.ndarray:
    """[M, 2] rows of [N, D] and [K, D] unit descriptors that are each other's nearest neighbour and pass the ratio
    test both ways (a row with no second neighbour passes), among the [N, K] ``allowed`` pairs (default: all)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    distance = np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0))
    if allowed is not None:
        distance[~allowed] = np.inf
    forward, backward = distance.argmin(axis=1), distance.argmin(axis=0)
    rows = np.flatnonzero(backward[forward] == np.arange(len(a)))
    cols = forward[rows]

    def passes(d: np.ndarray, index: np.ndarray, best: np.ndarray) -> np.ndarray:
        if d.shape[1] < 2:
            return np.ones(len(index), dtype=bool)
        second = np.partition(d[index], 1, axis=1)[:, 1]
        return best < ratio * second

    best = distance[rows, cols]
    rows, cols, best = rows[np.isfinite(best)], cols[np.isfinite(best)], best[np.isfinite(best)]
    keep = passes(distance, rows, best) & passes(distance.T, cols, best)
    return np.stack([rows[keep], cols[keep]], axis=1)


def frame_pairs(num_frames: int, config: FeatureConfig) -> List[tuple]:
    """The (a, b) frame pairs to match, a < b."""
    gap = num_frames if num_frames <= config.exhaustive_frames else config.max_pair_gap
    return [(a, b) for a in range(num_frames) for b in range(a + 1, min(a + gap, num_frames - 1) + 1)]


def flow_predictions(features: List[FrameFeatures], flow: VideoFlow, pairs: List[tuple]) -> Dict[tuple, np.ndarray]:
    """For each pair (a, b): [N_a, 2] where the forward flow, chained from frame a to b, carries a's keypoints."""
    predictions: Dict[tuple, np.ndarray] = {}
    for a in sorted({a for a, _ in pairs}):
        uv = features[a].uv.astype(np.float32)
        last = max(b for first, b in pairs if first == a)
        for v in range(a, last):
            uv = uv + sample(flow.forward[v], uv) if len(uv) else uv
            predictions[(a, v + 1)] = uv
    return predictions


def feature_tracks(
    features: List[FrameFeatures], num_objects: int, config: FeatureConfig, flow: Optional[VideoFlow] = None
) -> Tracks:
    """Tracks chained from every object's pairwise SIFT matches (see the module docstring); with ``flow``, matches
    are kept only near where the flow carries each keypoint."""
    offsets = np.concatenate([[0], np.cumsum([len(f.uv) for f in features])])
    edges = []
    pairs = frame_pairs(len(features), config)
    predictions = flow_predictions(features, flow, pairs) if flow is not None else {}
    with progress_bar("Matching features", len(pairs)) as advance:
        for a, b in pairs:
            for k in range(num_objects):
                rows_a = np.flatnonzero(features[a].object_id == k)
                rows_b = np.flatnonzero(features[b].object_id == k)
                allowed = None
                if flow is not None:
                    offset = predictions[(a, b)][rows_a, None, :] - features[b].uv[None, rows_b, :]
                    allowed = np.linalg.norm(offset, axis=-1) <= config.guide_radius + config.guide_growth * (b - a)
                matches = mutual_matches(
                    features[a].descriptors[rows_a], features[b].descriptors[rows_b], config.ratio, allowed
                )
                edges.append(np.stack([offsets[a] + rows_a[matches[:, 0]], offsets[b] + rows_b[matches[:, 1]]]))
            advance()
    edges = np.concatenate([np.zeros((2, 0), dtype=np.int64), *edges], axis=1)
    graph = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(offsets[-1], offsets[-1]))
    _, track = connected_components(graph, directed=False)
    frame = np.repeat(np.arange(len(features)), np.diff(offsets))
    length = np.bincount(track)
    distinct_frames = np.bincount(np.unique(track * len(features) + frame) // len(features), minlength=len(length))
    keep_track = (distinct_frames == length) & (length >= config.min_length)
    rows = keep_track[track]
    kept, track = np.unique(track[rows], return_inverse=True)
    object_id = np.concatenate([np.zeros(0, dtype=np.int64), *[f.object_id for f in features]]).astype(np.int64)
    track_object = np.zeros(len(kept), dtype=np.int64)
    track_object[track] = object_id[rows]
    uv = np.concatenate([np.zeros((0, 2)), *[f.uv for f in features]])
    return Tracks(track=track, frame=frame[rows], uv=uv[rows], track_object=track_object)


def merge_tracks(first: Tracks, second: Tracks) -> Tracks:
    """Both sets of tracks as one (the second's track indices follow the first's)."""
    return Tracks(
        track=np.concatenate([first.track, second.track + first.num_tracks]),
        frame=np.concatenate([first.frame, second.frame]),
        uv=np.concatenate([first.uv, second.uv]),
        track_object=np.concatenate([first.track_object, second.track_object]),
    )
