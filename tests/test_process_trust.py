"""The registration check of osn-process-data (process/trust.py): on the default demo it leaves out the
sphere and the cylinder (wrong poses with tiny reprojection errors, benchmarks/PROCESS_DATA_RESULTS.md)
and keeps the background and the box, whose poses are right; reconstructions from halves of an object's
tracks are compared with its own, so that an unstable one is caught even when it covers every frame."""

from __future__ import annotations

import json

import numpy as np
import pytest

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.scene_format import PinholeCamera
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.evaluation import rotation_disagreement_deg
from osn_nerfstudio.process.frames import FrameSamplingConfig
from osn_nerfstudio.process.pipeline import ProcessDataConfig, process_video, summary_table
from osn_nerfstudio.process.sfm import ObjectSfM, SfMFailure
from osn_nerfstudio.process.tracks import Tracks
from osn_nerfstudio.process.trust import TrustConfig, half_disagreement, trust_signals, untrusted_reason
from process_factory import export_frames_and_masks


def _sfm(registered: np.ndarray, per_frame: int) -> ObjectSfM:
    frames = np.repeat(np.flatnonzero(registered), per_frame)
    n = len(frames)
    return ObjectSfM(
        registered=registered,
        camera_to_object=np.tile(np.eye(4), (len(registered), 1, 1)),
        points=np.zeros((n, 3)),
        keypoint_frame=frames,
        keypoint_uv=np.zeros((n, 2)),
        keypoint_depth=np.ones(n),
        keypoint_error=np.zeros(n),
        camera=PinholeCamera(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0),
    )


def test_signals_and_thresholds():
    visible = np.ones(40, dtype=bool)
    visible[:3] = False
    good = np.zeros(40, dtype=bool)
    good[3:40] = True
    assert untrusted_reason(trust_signals(_sfm(good, 200), visible), TrustConfig()) is None
    short = np.zeros(40, dtype=bool)
    short[6:16] = True  # 10 of 37 visible frames, like the demo's sphere
    reason = untrusted_reason(trust_signals(_sfm(short, 200), visible), TrustConfig())
    assert reason is not None and "10 of the 37 frames" in reason and "keypoints per registered frame" not in reason
    sparse = untrusted_reason(trust_signals(_sfm(good, 40), visible), TrustConfig())
    assert (
        sparse is not None
        and "40 keypoints per registered frame" in sparse
        and "frames where it is visible" not in sparse
    )


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _poses(rotations: np.ndarray) -> np.ndarray:
    poses = np.tile(np.eye(4), (len(rotations), 1, 1))
    poses[:, :3, :3] = rotations
    return poses


def test_rotation_disagreement_ignores_the_object_frame_and_splits_a_difference():
    rng = np.random.default_rng(0)
    rotations = np.stack([_rotation(rng.normal(size=3), rng.uniform(0, 180)) for _ in range(12)])
    frame_change = _rotation([1.0, 2.0, -0.5], 70.0)
    assert np.allclose(rotation_disagreement_deg(frame_change @ rotations, rotations), 0.0, atol=1e-5)
    # two frames, one turned 10 degrees further about an axis: the best alignment leaves 5 degrees on each
    base = _rotation([0.3, 1.0, 0.2], 40.0)
    turned = _rotation([0.0, 0.0, 1.0], 10.0) @ base
    assert np.allclose(rotation_disagreement_deg(np.stack([base, turned]), np.stack([base, base])), 5.0, atol=1e-6)


def _tracks(num_tracks: int) -> Tracks:
    track = np.repeat(np.arange(num_tracks), 4)
    return Tracks(track=track, frame=np.tile(np.arange(4), num_tracks), uv=np.zeros((4 * num_tracks, 2)),
                  track_object=np.zeros(num_tracks, dtype=np.int64))


def test_half_disagreement_measures_halves_against_the_full_reconstruction():
    num_frames = 20
    rng = np.random.default_rng(1)
    rotations = np.stack([_rotation(rng.normal(size=3), rng.uniform(0, 90)) for _ in range(num_frames)])
    full = _sfm(np.ones(num_frames, dtype=bool), 100)
    full.camera_to_object = _poses(rotations)
    tracks = _tracks(60)
    halves = []

    def stable(half: Tracks) -> ObjectSfM:  # the same poses in another object frame
        halves.append(np.unique(half.track))
        return ObjectSfM(**{**full.__dict__, "camera_to_object": _poses(_rotation([1, 1, 0], 30.0) @ rotations)})

    assert half_disagreement(tracks, full, stable, splits=3) == pytest.approx(0.0, abs=1e-5)
    assert len(halves) == 6
    for a, b in zip(halves[0::2], halves[1::2]):  # each split partitions the tracks
        assert not np.intersect1d(a, b).size and np.union1d(a, b).size == 60

    # rotations turned about a frame-dependent axis do not align away; the figure is their median angle
    def wobbly(half: Tracks) -> ObjectSfM:
        turned = np.stack([r @ _rotation([0.0, 0.0, 1.0], 12.0 if v % 2 else -12.0) for v, r in enumerate(rotations)])
        return ObjectSfM(**{**full.__dict__, "camera_to_object": _poses(turned)})

    figure = half_disagreement(tracks, full, wobbly, splits=2)
    expected = np.median(rotation_disagreement_deg(wobbly(tracks).camera_to_object[:, :3, :3], rotations))
    assert figure == pytest.approx(expected) and figure > 5.0
    signals = trust_signals(full, np.ones(num_frames, dtype=bool), figure)
    reason = untrusted_reason(signals, TrustConfig())
    assert reason is not None and "unstable" in reason and f"{figure:.1f} degrees" in reason
    assert untrusted_reason(signals, TrustConfig(max_half_disagreement=figure + 1)) is None

    calls = []

    def failing(half: Tracks) -> ObjectSfM:  # every other half fails and is left out
        calls.append(1)
        if len(calls) % 2:
            raise SfMFailure("too few tracks")
        return wobbly(half)

    assert half_disagreement(tracks, full, failing, splits=2) == pytest.approx(expected)

    def never(half: Tracks) -> ObjectSfM:
        raise SfMFailure("too few tracks")

    assert np.isnan(half_disagreement(tracks, full, never, splits=2))
    assert untrusted_reason(trust_signals(full, np.ones(num_frames, dtype=bool), float("nan")), TrustConfig()) is None


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("trust")
    truth = make_demo_scene(work / "truth", DemoSceneConfig())
    frames, masks = export_frames_and_masks(truth, work / "inputs")
    config = ProcessDataConfig(
        data=frames,
        output_dir=work / "scene",
        masks=masks,
        object_names=[o.name for o in truth.objects[1:]],
        focal_length=truth.camera.fx,
        sampling=FrameSamplingConfig(frame_rate=DemoSceneConfig().fps),
        preview=False,
    )
    report = process_video(config)
    return truth, load_scene(config.output_dir), report


def test_default_demo_leaves_out_the_untrusted_small_objects(default_demo):
    truth, scene, report = default_demo
    assert [o.name for o in scene.objects] == ["background", "box"]
    by_name = {o.name: o for o in report.objects}
    for name in ("sphere", "cylinder"):
        assert (
            by_name[name].failure is not None and by_name[name].failure.startswith("untrusted registration")
        ), by_name[name]
        assert "frames where it is visible" in by_name[name].failure
    assert by_name["box"].untrusted is None and by_name["box"].failure is None
    assert by_name["background"].untrusted is None
    # halves of the tracks agree with the full reconstruction where the poses are right (0.2 and 1.1 degrees
    # measured), not on the cylinder (26.7); every object's visible frames are reported
    assert by_name["background"].half_disagreement_deg < 1.0 and by_name["box"].half_disagreement_deg < 3.0
    assert by_name["cylinder"].half_disagreement_deg > 10.0 and "unstable" in by_name["cylinder"].failure
    assert [by_name[n].visible_frames for n in ("background", "box", "sphere", "cylinder")] == [40, 40, 37, 36]
    # their pixels become unknown, like an object that registers nowhere
    names = [o.name for o in truth.objects]
    for v in (8, 25):
        truth_mask, mask = truth.load_mask(v), scene.load_mask(v)
        for name in ("sphere", "cylinder"):
            assert np.all(mask[truth_mask == names.index(name)] == scene.mask_ignore_label)
    assert scene.provenance["objects"][2]["untrusted"].startswith("untrusted registration")
    # strict JSON: what was not measured (the sphere's halves, its reprojection error) is null, not NaN
    data = json.loads((scene.root / "scene.json").read_text(), parse_constant=lambda value: pytest.fail(value))
    sphere = data["provenance"]["objects"][2]
    assert sphere["half_disagreement_deg"] is None and sphere["visible_frames"] == 37
    assert "untrusted" in str([c._cells for c in summary_table(report).columns])
