"""Registration from mask outlines and short tracks (process/silhouettes.py): what the masks measure, the pieces of
the solver checked exactly, a textured ball turning and moving under a moving camera registered against its truth,
and the pipeline's use of it (opt-in, judged by the registration check)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.scene_format import PinholeCamera
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process import pipeline
from osn_nerfstudio.process.evaluation import rotation_disagreement_deg
from osn_nerfstudio.process.frames import FrameSamplingConfig
from osn_nerfstudio.process.pipeline import ProcessDataConfig, process_video, summary_table
from osn_nerfstudio.process.sfm import SfMFailure, reconstruct_object
from osn_nerfstudio.process.silhouettes import (
    SilhouetteConfig,
    centre_offsets,
    kabsch,
    lift_to_sphere,
    local_linear,
    measure_silhouettes,
    register_from_silhouettes,
    silhouette_box,
)
from osn_nerfstudio.process.tracks import Tracks
from osn_nerfstudio.process.trust import TrustConfig, silhouette_untrusted_reason
from process_factory import export_frames_and_masks

CAMERA = PinholeCamera(width=320, height=240, fx=300.0, fy=300.0, cx=160.0, cy=120.0)
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


def _disc(labels: np.ndarray, centre, radius: float, value: int) -> None:
    rows, cols = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]] + 0.5
    labels[(cols - centre[0]) ** 2 + (rows - centre[1]) ** 2 <= radius**2] = value


def test_outline_measurements_and_which_frames_show_the_whole_outline():
    labels = np.zeros((9, 60, 80), dtype=np.int64)
    for v in range(9):
        _disc(labels[v], (40.0, 30.0), 8.0, 1)
    _disc(labels[2], (4.0, 30.0), 6.0, 1)  # frame 2: cut by the image border
    _disc(labels[3], (52.5, 30.0), 5.0, 2)  # frame 3: against another object
    labels[4, 19:22, 30:50] = 255  # frame 4: unknown pixels right above it (its top row is 22)
    labels[5][labels[5] == 1] = 0
    _disc(labels[5], (40.0, 30.0), 6.5, 1)  # frame 5: suddenly smaller (partly hidden by something static)
    labels[6][labels[6] == 1] = 0  # frame 6: not visible
    silhouettes = measure_silhouettes(labels, 1, shrink_tolerance=0.08)
    assert silhouettes.visible.tolist() == [True] * 6 + [False] + [True] * 2
    assert silhouettes.whole.tolist() == [True, True, False, False, False, False, False, True, True]
    # a disc centred between pixel centres: centroid exact, sqrt(area / pi) near its radius
    assert np.allclose(silhouettes.centroid[0], [40.0, 30.0])
    assert silhouettes.radius[0] == pytest.approx(np.sqrt((labels[0] == 1).sum() / np.pi))
    assert silhouettes.radius[0] == pytest.approx(8.0, abs=0.2)
    assert silhouettes.extent[0] == pytest.approx(8.0, abs=0.75)
    assert np.isnan(silhouettes.centroid[6]).all() and silhouettes.radius[6] == 0


def test_local_linear_fit_interpolates_and_extrapolates_a_line():
    known_t = np.array([0.0, 2.0, 3.0, 7.0])
    known_y = np.stack([1.0 + 0.5 * known_t, -2.0 * known_t], 1)
    query = np.array([1.0, 5.0, 9.0, -2.0])
    assert np.allclose(local_linear(known_t, known_y, query, 3), np.stack([1.0 + 0.5 * query, -2.0 * query], 1))
    assert np.allclose(local_linear(known_t[:1], known_y[:1], query, 3), known_y[0])  # one sample: a constant


def test_lifting_and_kabsch():
    centre = np.array([[0.3, -0.2, 8.0]] * 3)
    pixel_of_centre = CAMERA.fx * centre[0, :2] / centre[0, 2] + [CAMERA.cx, CAMERA.cy]
    uv = np.stack([pixel_of_centre, pixel_of_centre + [20.0, 0.0], pixel_of_centre + [400.0, 0.0]])
    lifted = lift_to_sphere(uv, centre, CAMERA)
    ray = centre[0] / np.linalg.norm(centre[0])
    assert np.allclose(lifted[0], -ray)  # the front of the sphere, straight towards the camera
    assert np.linalg.norm(lifted[1]) == pytest.approx(1.0) and lifted[1] @ ray < 0  # front half
    assert np.linalg.norm(lifted[2]) > 1.0  # a ray that misses: its point nearest to the centre
    rotation = Rotation.from_rotvec([0.3, -1.1, 0.4]).as_matrix()
    points = np.random.default_rng(0).normal(size=(7, 3))
    assert np.allclose(kabsch(points, points @ rotation.T), rotation)


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-from-camera rotation, OpenCV axes, z-up world."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward], 1)


def turning_ball(num_frames: int = 30, radius: float = 0.2, turns: float = 1.5, noise: float = 0.3):
    """A ball (300 surface points) moving sideways and turning 1.5 times about a tilted axis, about 15 px in radius,
    under a camera moving sideways: its label maps, the background's camera-to-world poses (OpenGL), its true
    camera-to-object poses in units of its radius, and tracks of its points on the side facing the camera."""
    rng = np.random.default_rng(0)
    i = np.arange(300) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / 300), np.pi * (1 + 5**0.5) * i
    surface = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)
    axis = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    rows, cols = np.mgrid[0 : CAMERA.height, 0 : CAMERA.width] + 0.5
    rays = np.stack([(cols - CAMERA.cx) / CAMERA.fx, (rows - CAMERA.cy) / CAMERA.fy, np.ones_like(cols)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    labels = np.zeros((num_frames, CAMERA.height, CAMERA.width), dtype=np.int64)
    background, truth = np.zeros((num_frames, 4, 4)), np.zeros((num_frames, 4, 4))
    observations = []
    for v in range(num_frames):
        p = v / (num_frames - 1)
        eye = np.array([-1.0 + 2.0 * p, -4.0, 1.2])
        camera_to_world = np.eye(4)
        camera_to_world[:3, :3], camera_to_world[:3, 3] = _look_at(eye, np.array([0.0, 0.0, 0.5])), eye
        background[v] = camera_to_world @ FLIP
        centre = np.array([0.8 - 1.6 * p, 0.3 * np.sin(3 * p), radius])
        object_to_world = np.eye(4)
        object_to_world[:3, :3] = Rotation.from_rotvec(axis * turns * 2 * np.pi * p).as_matrix()
        object_to_world[:3, 3] = centre
        truth[v] = np.linalg.inv(object_to_world) @ camera_to_world @ FLIP
        truth[v, :3, 3] /= radius
        in_camera = camera_to_world[:3, :3].T @ (centre - eye)
        along = rays @ in_camera
        labels[v][along**2 - in_camera @ in_camera + radius**2 > 0] = 1
        points = centre + radius * surface @ object_to_world[:3, :3].T
        facing = np.einsum("ni,ni->n", points - centre, eye - points) > 0.2 * radius * np.linalg.norm(
            eye - points, axis=1
        )
        seen = (points[facing] - eye) @ camera_to_world[:3, :3]
        uv = CAMERA.fx * seen[:, :2] / seen[:, 2:] + [CAMERA.cx, CAMERA.cy] + rng.normal(0, noise, (len(seen), 2))
        observations += [(j, v, *x) for j, x in zip(np.flatnonzero(facing), uv)]
    table = np.array(observations)
    tracks = Tracks(
        track=table[:, 0].astype(np.int64),
        frame=table[:, 1].astype(np.int64),
        uv=table[:, 2:],
        track_object=np.ones(300, dtype=np.int64),
    )
    return labels, background, truth, tracks


@pytest.fixture(scope="module")
def ball():
    return turning_ball()


def _true_offsets(background: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[F, 3] camera-to-ball-centre offsets in world axes, in ball radii, from the true poses."""
    centre_in_camera = np.linalg.inv(truth @ FLIP)[:, :3, 3]
    return np.einsum("fij,fj->fi", (background @ FLIP)[:, :3, :3], centre_in_camera)


def test_centres_from_the_masks_match_the_truth(ball):
    labels, background, truth, _ = ball
    silhouettes = measure_silhouettes(labels, 1, 0.08)
    assert silhouettes.whole.all()
    offsets = centre_offsets(silhouettes, CAMERA, background[:, :3, :3] @ np.diag([1.0, -1.0, -1.0]), 3)
    # as vectors in world axes: within 3 % of the distance in every frame (a wrong axis flip would be far off)
    theirs = _true_offsets(background, truth)
    assert np.all(np.linalg.norm(offsets - theirs, axis=1) < 0.03 * np.linalg.norm(theirs, axis=1))
    with pytest.raises(SfMFailure, match="never wholly in view"):
        centre_offsets(measure_silhouettes(np.zeros_like(labels), 1, 0.08), CAMERA, background[:, :3, :3], 3)


def test_a_turning_ball_is_registered_against_its_truth(ball):
    labels, background, truth, tracks = ball
    silhouettes = measure_silhouettes(labels, 1, 0.08)
    registration = register_from_silhouettes(tracks, silhouettes, CAMERA, background, SilhouetteConfig())
    sfm = registration.sfm
    assert sfm.registered.all() and registration.turn_measured.all()
    # measured: 0.56 degrees median, 1.2 at most; camera distance within 1.1 % over the clip; 0.32 px error
    error = rotation_disagreement_deg(sfm.camera_to_object[:, :3, :3], truth[:, :3, :3])
    assert np.median(error) < 1.5 and error.max() < 3.0
    # the centre seen from the camera (camera axes, independent of the object's frame) agrees with the truth's
    ours, theirs = np.linalg.inv(sfm.camera_to_object @ FLIP)[:, :3, 3], np.linalg.inv(truth @ FLIP)[:, :3, 3]
    assert np.all(np.linalg.norm(ours - theirs, axis=1) < 0.03 * np.linalg.norm(theirs, axis=1))
    assert np.median(sfm.keypoint_error) < 0.6
    # keypoint depths against the ball's true z-depth at their pixels (in radii): one unit over the clip
    truth_depth = np.full(len(sfm.keypoint_frame), np.nan)
    for m, (v, uv) in enumerate(zip(sfm.keypoint_frame, sfm.keypoint_uv)):
        centre = np.linalg.inv(truth[v] @ FLIP)[:3, 3]
        ray = np.array([(uv[0] - CAMERA.cx) / CAMERA.fx, (uv[1] - CAMERA.cy) / CAMERA.fy, 1.0])
        a, b, c = ray @ ray, ray @ centre, centre @ centre - 1.0
        if b * b - a * c > 0:
            truth_depth[m] = (b - np.sqrt(b * b - a * c)) / a
    ratio = (sfm.keypoint_depth / truth_depth)[np.isfinite(truth_depth)]
    quartiles = np.percentile(ratio, [25, 50, 75])
    assert abs(quartiles[1] - 1.0) < 0.03 and (quartiles[2] - quartiles[0]) / quartiles[1] < 0.03
    box = silhouette_box(registration, SilhouetteConfig())
    assert np.median(box.sfm.keypoint_depth) == pytest.approx(1.0)
    assert np.all(box.bbox_max > 0) and np.allclose(box.bbox_min, -box.bbox_max)
    # the box holds the ball (its radius is 1 in the registration's unit) and every keypoint, put back in 3D
    assert box.bbox_max[0] * np.median(sfm.keypoint_depth) > 1.0
    moved = box.sfm
    rays = np.stack(
        [(moved.keypoint_uv[:, 0] - CAMERA.cx) / CAMERA.fx, (moved.keypoint_uv[:, 1] - CAMERA.cy) / CAMERA.fy], 1
    )
    in_camera = np.concatenate([rays, np.ones((len(rays), 1))], 1) * moved.keypoint_depth[:, None]
    poses = moved.camera_to_object[moved.keypoint_frame] @ FLIP  # camera (OpenCV axes) to object
    in_object = np.einsum("nij,nj->ni", poses[:, :3, :3], in_camera) + poses[:, :3, 3]
    assert np.all(np.abs(in_object) <= box.bbox_max + 1e-9)


def test_frames_without_the_background_or_the_object_are_not_registered(ball):
    labels, background, truth, tracks = ball
    background = background.copy()
    background[4] = np.nan
    labels = labels.copy()
    labels[9] = 0
    silhouettes = measure_silhouettes(labels, 1, 0.08)
    registration = register_from_silhouettes(tracks, silhouettes, CAMERA, background, SilhouetteConfig())
    expected = np.ones(len(labels), dtype=bool)
    expected[[4, 9]] = False
    sfm = registration.sfm
    assert sfm.registered.tolist() == expected.tolist()
    assert np.isnan(sfm.camera_to_object[[4, 9]]).all()
    assert not np.isin(sfm.keypoint_frame, [4, 9]).any()
    # the gaps are two frames long in time: the steady turn and its smoothness count frames, not registered views
    error = rotation_disagreement_deg(sfm.camera_to_object[expected, :3, :3], truth[expected, :3, :3])
    assert np.median(error) < 1.5 and error.max() < 3.0


def test_a_silhouette_registration_is_never_trusted_and_says_which_checks_fail():
    config = TrustConfig()
    passes = silhouette_untrusted_reason(0.9, 1.0, 0.0, config)
    assert "turn unverified" in passes and "passes the halves and ambiguity checks" in passes
    assert "measured in only 30 %" in silhouette_untrusted_reason(0.3, 1.0, 0.0, config)
    assert "unstable" in silhouette_untrusted_reason(0.9, 7.5, 0.0, config)
    assert "ambiguous" in silhouette_untrusted_reason(0.9, 1.0, 28.6, config)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("silhouettes")
    demo = DemoSceneConfig(seed=0, width=128, height=96, num_frames=24, num_objects=1, test_view_every=24)
    truth = make_demo_scene(work / "truth", demo)
    frames, masks = export_frames_and_masks(truth, work / "inputs")
    return truth, ProcessDataConfig(
        data=frames,
        output_dir=work / "scene",
        masks=masks,
        object_names=["box"],
        focal_length=truth.camera.fx,
        sampling=FrameSamplingConfig(frame_rate=demo.fps),
        preview=False,
    )


def test_pipeline_registers_from_silhouettes_only_when_asked(small_demo):
    truth, config = small_demo
    report = process_video(config)  # default: off, and the box's SfM is trusted anyway
    assert [o.source for o in report.objects] == ["SfM", "SfM"] and "silhouettes" not in report.stage_seconds
    # enabled, it is tried only where SfM fails or is untrusted: not for this box
    enabled = replace(config, output_dir=config.output_dir.with_name("enabled"), silhouettes=SilhouetteConfig(True))
    assert [o.source for o in process_video(enabled).objects] == ["SfM", "SfM"]
    preferred = replace(
        config, output_dir=config.output_dir.with_name("preferred"), silhouettes=SilhouetteConfig(prefer=True)
    )
    report = process_video(preferred)
    box = report.objects[1]
    assert box.source == "silhouettes" and box.sfm_problem == "not used (--silhouettes.prefer)"
    assert box.failure is None and "turn unverified" in box.untrusted  # kept, flagged
    assert box.registered_frames == box.visible_frames == 24 and 0.5 <= box.turn_measured <= 1.0
    scene = load_scene(preferred.output_dir)
    assert scene.registered[1].all() and scene.provenance["objects"][1]["source"] == "silhouettes"
    error = rotation_disagreement_deg(scene.camera_to_object[1][:, :3, :3], truth.camera_to_object[1][:, :3, :3])
    assert np.median(error) < 6.0  # measured 1.9 degrees (SfM: 2.0); docs/process-data.md
    table = str([c._cells for c in summary_table(report).columns])
    assert "silhouettes" in table and "KEPT (--silhouettes)" in table


def test_untrusted_or_failed_sfm_is_replaced_when_enabled(small_demo):
    truth, config = small_demo
    untrusted = TrustConfig(min_frame_observations=10**6)  # the box's SfM is now untrusted
    enabled = replace(
        config, output_dir=config.output_dir.with_name("untrusted"), trust=untrusted, silhouettes=SilhouetteConfig(True)
    )
    box = process_video(enabled).objects[1]
    assert box.source == "silhouettes" and box.failure is None and "keypoints per registered frame" in box.sfm_problem
    assert load_scene(enabled.output_dir).num_objects == 2
    # its silhouettes cannot register it either: left out, both reasons given
    failing = replace(enabled, output_dir=config.output_dir.with_name("failing"))
    failing.silhouettes = SilhouetteConfig(enabled=True, min_whole_frames=10**6)
    box = process_video(failing).objects[1]
    assert box.source == "SfM" and "keypoints per registered frame" in box.failure
    assert "from its silhouettes: its whole outline is in view in only" in box.failure
    assert load_scene(failing.output_dir).num_objects == 1


def test_failed_sfm_is_replaced_when_enabled(small_demo, monkeypatch):
    truth, config = small_demo

    def no_foreground_sfm(tracks, *args, **kwargs):
        if np.all(tracks.object_id != 0):
            raise SfMFailure("forced for the test")
        return reconstruct_object(tracks, *args, **kwargs)

    monkeypatch.setattr(pipeline, "reconstruct_object", no_foreground_sfm)
    off = replace(config, output_dir=config.output_dir.with_name("sfm-failed"))
    assert process_video(off).objects[1].failure.startswith("forced for the test")
    enabled = replace(
        off, output_dir=config.output_dir.with_name("sfm-failed-enabled"), silhouettes=SilhouetteConfig(True)
    )
    box = process_video(enabled).objects[1]
    assert box.source == "silhouettes" and box.sfm_problem == "forced for the test" and box.failure is None
