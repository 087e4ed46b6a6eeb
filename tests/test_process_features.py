"""SIFT feature tracks (process/features.py): mutual nearest-neighbour matching with the ratio test, chaining matches
into tracks per object, dropping ambiguous chains, and the optical-flow guide; and real SIFT on a textured image."""

from __future__ import annotations

import numpy as np

from osn_nerfstudio.process.features import (
    FeatureConfig,
    FrameFeatures,
    extract_features,
    feature_tracks,
    frame_pairs,
    merge_tracks,
    mutual_matches,
)
from osn_nerfstudio.process.flow import VideoFlow
from osn_nerfstudio.process.tracks import NO_OBJECT, Tracks


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_mutual_matches_pairs_nearest_neighbours_and_applies_the_ratio_test():
    rng = np.random.default_rng(0)
    a = _unit(rng.normal(size=(6, 128)))
    order = np.array([3, 0, 5, 1, 4, 2])
    b = _unit(a[np.argsort(order)] + 0.01 * rng.normal(size=(6, 128)))  # b[order[i]] is a[i], slightly moved
    assert np.array_equal(mutual_matches(a, b, ratio=0.8), np.stack([np.arange(6), order], axis=1))
    # a second candidate almost as close as the first fails the ratio test
    twin = np.concatenate([b, _unit(b[order[:1]] + 1e-4 * rng.normal(size=(1, 128)))])
    matched = mutual_matches(a, twin, ratio=0.8)
    assert 0 not in matched[:, 0] and len(matched) == 5
    # pairs that are not allowed are never matched
    allowed = np.ones((6, 6), dtype=bool)
    allowed[2, order[2]] = False
    assert 2 not in mutual_matches(a, b, ratio=0.8, allowed=allowed)[:, 0]
    assert mutual_matches(a, b[:0], ratio=0.8).shape == (0, 2)


def _features(uv, descriptors, objects) -> FrameFeatures:
    return FrameFeatures(
        uv=np.asarray(uv, dtype=np.float64), descriptors=_unit(np.asarray(descriptors)), object_id=np.asarray(objects)
    )


def test_feature_tracks_chain_matches_per_object_and_drop_ambiguous_chains():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(3, 128))  # identities 0 and 1 on object 1, identity 2 on object 2
    shared = points[0]  # object 2 also shows identity 0's descriptor: objects are matched apart
    frames = []
    for v in range(4):
        descriptors = [points[0], points[1], points[2], shared]
        frames.append(_features([[10 + v, 10], [20 + v, 10], [30 + v, 10], [40 + v, 10]], descriptors, [1, 1, 2, 2]))
    config = FeatureConfig(enabled=True, max_pair_gap=3, min_length=3)
    tracks = feature_tracks(frames, num_objects=3, config=config)
    assert tracks.num_tracks == 4 and np.array_equal(np.bincount(tracks.track), [4, 4, 4, 4])
    for t in range(tracks.num_tracks):  # each track stays on one keypoint identity and one object
        uv = tracks.uv[tracks.track == t]
        assert np.ptp(uv[:, 0] - tracks.frame[tracks.track == t]) == 0
    assert sorted(tracks.track_object.tolist()) == [1, 1, 2, 2]
    # frame 3 shows identity 1 twice, alike: the ratio test keeps it out of frame 3 (its track ends at frame 2)
    frames[3] = _features([[13, 10], [23, 10], [33, 10], [43, 10], [60, 10]],
                          [points[0], points[1] + 1e-3 * points[2], points[2], shared, points[1] - 1e-3 * points[2]],
                          [1, 1, 2, 2, 1])
    assert sorted(np.bincount(feature_tracks(frames, num_objects=3, config=config).track).tolist()) == [3, 4, 4, 4]
    # with fewer than min_length frames nothing is kept
    assert feature_tracks(frames[:2], num_objects=3, config=config).num_tracks == 0


def _angle(degrees: float) -> np.ndarray:
    row = np.zeros(128)
    row[:2] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return row


def test_a_chain_holding_two_keypoints_of_one_frame_is_dropped():
    # X (frame 0) matches A (frame 1) and B (frame 2); C (frame 1) also matches B: X, A, B, C chain into one
    # component with two keypoints of frame 1, which cannot be one point's track
    frames = [
        _features([[10, 10]], [_angle(0)], [0]),
        _features([[11, 10], [30, 10]], [_angle(-30), _angle(60)], [0, 0]),
        _features([[12, 10]], [_angle(40)], [0]),
    ]
    config = FeatureConfig(enabled=True, max_pair_gap=2, min_length=2)
    assert feature_tracks(frames, num_objects=1, config=config).num_tracks == 0
    frames[1] = _features([[11, 10]], [_angle(-30)], [0])  # without C the chain X, A, B is a track
    assert np.array_equal(np.bincount(feature_tracks(frames, num_objects=1, config=config).track), [3])


def test_flow_guide_rejects_matches_away_from_where_the_flow_carries_a_keypoint():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(2, 128))
    frames = [_features([[10 + 3 * v, 10], [30 + 3 * v, 10]], points, [0, 0]) for v in range(3)]
    frames[2].uv[1] += [15.0, 0.0]  # identity 1 jumps 15 px off the flow in frame 2
    flow = np.zeros((2, 20, 64, 2), dtype=np.float32)
    flow[..., 0] = 3.0  # everything moves 3 px right per frame
    video = VideoFlow(forward=flow, backward=-flow)
    config = FeatureConfig(enabled=True, max_pair_gap=2, min_length=2)
    guided = feature_tracks(frames, num_objects=1, config=config, flow=video)
    assert sorted(np.bincount(guided.track).tolist()) == [2, 3]
    assert sorted(np.bincount(feature_tracks(frames, num_objects=1, config=config).track).tolist()) == [3, 3]


def test_frame_pairs_are_sequential_or_exhaustive():
    assert frame_pairs(5, FeatureConfig(max_pair_gap=2, exhaustive_frames=0)) == [
        (0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)
    ]
    assert len(frame_pairs(5, FeatureConfig(max_pair_gap=2, exhaustive_frames=5))) == 10


def test_extract_features_keeps_keypoints_inside_mask_interiors_and_merges_with_tracks():
    rng = np.random.default_rng(3)
    image = np.repeat((rng.random((60, 80, 1)) * 255).astype(np.uint8), 3, axis=2)
    image = np.ascontiguousarray(np.kron(image[:30, :40], np.ones((2, 2, 1), dtype=np.uint8)))  # blobs for SIFT
    interior = np.full((60, 80), NO_OBJECT)
    interior[:, :40] = 0
    interior[10:50, 50:75] = 1
    (features,) = extract_features(image[None], [interior], FeatureConfig(enabled=True))
    assert len(features.uv) > 20 and set(np.unique(features.object_id)) == {0, 1}
    pixel = np.floor(features.uv).astype(int)
    assert np.array_equal(interior[pixel[:, 1], pixel[:, 0]], features.object_id)
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    first = Tracks(track=np.array([0, 0]), frame=np.array([0, 1]), uv=np.zeros((2, 2)), track_object=np.array([1]))
    second = Tracks(track=np.array([0, 1]), frame=np.array([0, 0]), uv=np.ones((2, 2)), track_object=np.array([0, 2]))
    merged = merge_tracks(first, second)
    assert np.array_equal(merged.track, [0, 0, 1, 2]) and np.array_equal(merged.track_object, [1, 0, 2])
