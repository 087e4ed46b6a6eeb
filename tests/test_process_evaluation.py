"""Comparing a processed scene with its ground truth (process/evaluation.py): the similarity between an estimated
object frame and the true one, and the truth's evaluation carried onto a processed scene, checked by where a point of
every object lands in every test view."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.scene_format import read_amodal_depth, read_depth, read_mask, write_mask, write_scene_metadata
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.evaluation import transfer_evaluation


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _estimated(truth_poses: np.ndarray, scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera-to-object poses in a frame where x_true = scale * rotation @ x + translation (camera axes unscaled)."""
    poses = truth_poses.copy()
    poses[:, :3, :3] = rotation.T @ truth_poses[:, :3, :3]
    poses[:, :3, 3] = (truth_poses[:, :3, 3] - translation) @ rotation / scale
    return poses


def _stand_in(root, bend_deg: float = 0.0, scramble: bool = False):
    """A demo scene, and a stand-in for its processed version (every object in a frame and unit of its own, the last
    object left out, its pixels unknown; the background's cameras turned about their centres by up to ``bend_deg``
    over the video, a reconstruction bent a little; with ``scramble``, object 1 turned at random in every frame, a
    registration whose rotations are wrong) with the demo's evaluation transferred onto it."""
    config = DemoSceneConfig(seed=3, width=48, height=36, num_frames=10, num_objects=3, supersampling=1,
                             test_view_every=3)
    truth = make_demo_scene(root / "truth", config)
    shutil.copytree(truth.root, root / "processed")
    processed = load_scene(root / "processed")
    rng = np.random.default_rng(1)
    kept = truth.num_objects - 1
    similarities = [(float(rng.uniform(0.2, 5.0)), _random_rotation(rng), rng.normal(size=3)) for _ in range(kept)]
    poses = np.stack([_estimated(truth.camera_to_object[k], *similarities[k]) for k in range(kept)])
    for v in range(truth.num_frames):
        angle = np.radians(bend_deg * v / (truth.num_frames - 1))
        turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
        poses[0, v, :3, :3] = turn @ poses[0, v, :3, :3]
        if scramble:
            poses[1, v, :3, :3] = _random_rotation(rng) @ poses[1, v, :3, :3]
    keypoints = truth.keypoints.select(truth.keypoints.object_id < kept)
    keypoints.depth = keypoints.depth / np.array([s for s, _, _ in similarities])[keypoints.object_id]
    processed.objects, processed.camera_to_object = processed.objects[:kept], poses
    processed.registered, processed.keypoints, processed.evaluation = truth.registered[:kept], keypoints, None
    for v, frame in enumerate(processed.frames):
        labels = processed.load_mask(v)
        write_mask(processed.path(frame.mask), np.where(labels == kept, processed.mask_ignore_label, labels))
    write_scene_metadata(processed)
    return truth, transfer_evaluation(load_scene(processed.root), truth), similarities


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return _stand_in(tmp_path_factory.mktemp("transfer"))


def _project(camera, camera_to_background: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixel positions of [N, 3] background-frame points in an OpenGL-axes camera."""
    local = (points - camera_to_background[:3, 3]) @ camera_to_background[:3, :3]
    depth = -local[:, 2]
    return np.stack([camera.fx * local[:, 0] / depth + camera.cx, camera.cy - camera.fy * local[:, 1] / depth], 1)


def test_transfer_puts_every_object_where_the_truth_has_it_in_every_test_view(scenes):
    # units come from the truth's depth maps at the keypoints' pixels, not exactly at the keypoints: 0.03 px measured
    _check_where_objects_land(*scenes, atol=0.06)


def test_units_do_not_depend_on_an_objects_rotations(scenes, tmp_path):
    _, processed, _ = scenes
    _, scrambled, _ = _stand_in(tmp_path, scramble=True)
    scales = load_scene(processed.root).evaluation.relative_scales
    assert np.array_equal(load_scene(scrambled.root).evaluation.relative_scales, scales)
    assert np.all(scales > 0)


def test_transfer_follows_a_reconstruction_bent_over_the_video(tmp_path):
    # one similarity for the whole path would turn the last views by about half the bend: ~0.4 px here
    _check_where_objects_land(*_stand_in(tmp_path, bend_deg=1.0), atol=0.06)


def _check_where_objects_land(truth, processed, similarities, atol: float) -> None:
    moved = load_scene(processed.root)
    true_scales, scales = truth.evaluation.relative_scales, moved.evaluation.relative_scales
    assert scales[0] == 1.0 and len(scales) == processed.num_objects
    rng = np.random.default_rng(2)
    for view, true_view in zip(moved.evaluation.test_views, truth.evaluation.test_views):
        v = int(np.argmin(np.abs(truth.times - view.time)))
        for k in range(processed.num_objects):
            # points fixed to object k in frame v's camera, in its true unit; in the processed unit they are 1/s_k
            camera_points = rng.normal(size=(20, 3)) + np.array([0.0, 0.0, -3.0])
            true_world = camera_points * true_scales[k] @ truth.camera_to_object[0][v][:3, :3].T
            true_world += truth.camera_to_object[0][v][:3, 3]
            world = camera_points / similarities[k][0] * scales[k] @ processed.camera_to_object[0][v][:3, :3].T
            world += processed.camera_to_object[0][v][:3, 3]
            expected = _project(truth.camera, true_view.camera_to_background, true_world)
            assert np.allclose(_project(moved.camera, view.camera_to_background, world), expected, atol=atol)


def test_transfer_rescales_depths_and_marks_left_out_objects_unknown(scenes):
    truth, processed, similarities = scenes
    moved = load_scene(processed.root)
    background_scale = similarities[0][0]
    left_out = truth.num_objects - 1
    view, true_view = moved.evaluation.test_views[1], truth.evaluation.test_views[1]
    labels, true_labels = read_mask(moved.path(view.mask)), read_mask(truth.path(true_view.mask))
    assert (true_labels == left_out).any()
    assert np.array_equal(labels, np.where(true_labels == left_out, moved.mask_ignore_label, true_labels))
    depth, true_depth = read_depth(moved.path(view.depth)), read_depth(truth.path(true_view.depth))
    assert np.allclose(depth * background_scale, true_depth, rtol=2e-3)  # the unit read off the depth maps
    amodal = read_amodal_depth(moved.path(moved.evaluation.amodal_depth))
    true_amodal = read_amodal_depth(truth.path(truth.evaluation.amodal_depth))
    assert amodal.shape[0] == processed.num_objects
    assert np.allclose(amodal * background_scale, true_amodal[: processed.num_objects], rtol=2e-3)
    with pytest.raises(ValueError, match="already has an evaluation"):
        transfer_evaluation(moved, truth)
    other = make_demo_scene(truth.root.parent / "other", DemoSceneConfig(num_frames=4))
    with pytest.raises(ValueError, match="frames and image size"):
        transfer_evaluation(replace(moved, evaluation=None), other)
