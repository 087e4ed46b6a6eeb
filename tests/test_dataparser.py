"""The osn-data dataparser and datamanager on a small generated demo scene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.osn_datamanager import OSNDataManagerConfig, supervision_masks
from osn_nerfstudio.data.osn_dataparser import METADATA_KEY, OSNDataParserConfig, OSNSceneMetadata
from osn_nerfstudio.data.osn_dataset import UNKNOWN_OBJECT
from osn_nerfstudio.data.scene_format import read_depth, read_mask
from osn_nerfstudio.data.validation import load_scene
from scene_factory import UNREGISTERED, write_scene

SMALL_DEMO = DemoSceneConfig(seed=3, width=48, height=36, num_frames=10, test_view_every=3)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataparser") / "scene"
    make_demo_scene(root, SMALL_DEMO)
    return root


@pytest.fixture(scope="module")
def scene(scene_dir):
    return load_scene(scene_dir)


def ns_command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_ns_train_lists_osn():
    result = subprocess.run([ns_command("ns-train"), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "osn" in result.stdout.split()  # the method's own subcommand, not a substring of another


def test_ns_train_osn_offers_osn_data_dataparser():
    result = subprocess.run([ns_command("ns-train"), "osn", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "osn-data" in result.stdout


def test_train_cameras_are_background_poses_with_frame_and_time(scene_dir, scene):
    outputs = OSNDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("train")
    cams = outputs.cameras
    F = scene.num_frames
    assert len(cams) == F
    assert torch.allclose(cams.camera_to_worlds, torch.from_numpy(scene.camera_to_object[0, :, :3, :4]).float())
    expected_times = (scene.times - scene.times[0]) / (scene.times[-1] - scene.times[0])
    assert torch.allclose(cams.times[:, 0], torch.from_numpy(expected_times).float())
    assert torch.equal(cams.metadata["frame_index"][:, 0], torch.arange(F).float())
    assert outputs.image_filenames == [scene_dir / f.image for f in scene.frames]
    assert float(cams.fx[0]) == pytest.approx(scene.camera.fx)
    assert int(cams.width[0]) == scene.camera.width


def test_eval_split_uses_test_views_at_fractional_frames(scene_dir, scene):
    outputs = OSNDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("test")
    views = scene.evaluation.test_views
    assert len(outputs.cameras) == len(views) > 0
    for i, view in enumerate(views):
        pose = torch.from_numpy(view.camera_to_background[:3, :4]).float()
        assert torch.allclose(outputs.cameras.camera_to_worlds[i], pose, atol=1e-6)
        expected = np.interp(view.time, scene.times, np.arange(scene.num_frames))
        assert float(outputs.cameras.metadata["frame_index"][i, 0]) == pytest.approx(expected, abs=1e-5)
    assert "depth_filenames" in outputs.metadata


def test_eval_split_falls_back_to_frames(scene_dir, scene):
    config = OSNDataParserConfig(data=scene_dir, eval_split="frames", eval_frame_interval=4)
    outputs = config.setup().get_dataparser_outputs("val")
    assert outputs.cameras.metadata["frame_index"][:, 0].tolist() == list(range(0, scene.num_frames, 4))


def test_metadata_exposes_objects_keypoints_and_ranges(scene_dir, scene):
    outputs = OSNDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("train")
    meta: OSNSceneMetadata = outputs.metadata[METADATA_KEY]
    K, F = scene.num_objects, scene.num_frames
    assert meta.object_names == [o.name for o in scene.objects]
    assert meta.camera_to_object.shape == (K, F, 4, 4)
    assert torch.equal(meta.registered, torch.from_numpy(scene.registered))
    assert torch.isfinite(meta.camera_to_object).all()
    assert len(meta.keypoint_depth) == len(scene.keypoints)
    assert meta.scale_range.shape == (K, 2)
    assert meta.scale_range[0].tolist() == [1.0, 1.0]
    assert 0 < meta.near < meta.far


def test_scale_ranges_contain_true_scales(scene_dir, scene):
    meta = OSNDataParserConfig(data=scene_dir).setup().get_dataparser_outputs("train").metadata[METADATA_KEY]
    true = meta.true_scales
    assert true is not None
    for k in range(1, scene.num_objects):
        lo, hi = meta.scale_range[k].tolist()
        assert lo < float(true[k]) < hi, f"object {k}: true scale {float(true[k])} outside [{lo}, {hi}]"


def test_train_batches_carry_object_ids_frames_and_times(scene_dir, scene):
    config = OSNDataManagerConfig(
        dataparser=OSNDataParserConfig(data=scene_dir), train_num_rays_per_batch=2048, num_keypoint_rays=0
    )
    datamanager = config.setup(device="cpu", test_mode="val")
    ray_bundle, batch = datamanager.next_train(0)
    c, y, x = batch["indices"].long().unbind(-1)
    masks = np.stack([read_mask(scene_dir / f.mask) for f in scene.frames])
    expected_ids = torch.from_numpy(masks[c.numpy(), y.numpy(), x.numpy()])
    expected_ids[expected_ids == scene.mask_ignore_label] = UNKNOWN_OBJECT
    assert torch.equal(batch["object_id"][:, 0].cpu(), expected_ids)
    assert len(set(expected_ids.tolist())) > 2, "a batch should see several objects"
    assert torch.equal(ray_bundle.metadata["frame_index"][:, 0], c.float())
    frame_times = datamanager.train_dataparser_outputs.metadata[METADATA_KEY].frame_times
    assert torch.allclose(ray_bundle.times[:, 0], frame_times[c])
    origins = torch.from_numpy(scene.camera_to_object[0, c.numpy(), :3, 3]).float()
    assert torch.allclose(ray_bundle.origins, origins, atol=1e-5)
    assert torch.equal(ray_bundle.camera_indices[:, 0].cpu(), c)


def test_keypoint_rays_pass_through_their_keypoints(scene_dir, scene):
    config = OSNDataManagerConfig(
        dataparser=OSNDataParserConfig(data=scene_dir), train_num_rays_per_batch=64, num_keypoint_rays=128
    )
    datamanager = config.setup(device="cpu", test_mode="val")
    ray_bundle, batch = datamanager.next_train(0)
    assert len(ray_bundle) == 64 + 128
    assert torch.all(batch["keypoint_weight"][:64] == 0) and torch.all(batch["keypoint_weight"][64:] > 0)
    kp = scene.keypoints
    cam = scene.camera
    # rows are drawn at random: recover each ray's keypoint by its (frame, depth, weight)
    for i in range(64, 64 + 128, 16):
        frame = int(ray_bundle.camera_indices[i, 0])
        rows = np.flatnonzero(
            (kp.frame == frame)
            & np.isclose(kp.depth, float(batch["keypoint_depth"][i]), rtol=1e-6)
            & np.isclose(kp.weight, float(batch["keypoint_weight"][i]), rtol=1e-6)
        )
        assert rows.size >= 1
        u, v = kp.uv[rows[0]]
        expected = np.array([(u - cam.cx) / cam.fx, -(v - cam.cy) / cam.fy, -1.0])
        world_to_camera = np.linalg.inv(scene.camera_to_object[0, frame])
        direction = world_to_camera[:3, :3] @ ray_bundle.directions[i].double().numpy()
        assert np.allclose(direction / -direction[2], expected, atol=1e-5)
        assert int(batch["object_id"][i, 0]) == kp.object_id[rows[0]]
        # the ray's colour is the image's at the keypoint's pixel
        image = np.asarray(scene.load_image(frame), dtype=np.float32) / 255
        assert np.allclose(batch["image"][i].numpy(), image[int(v), int(u)], atol=1e-6)


def test_supervision_rays_cover_every_object(scene_dir, scene):
    config = OSNDataManagerConfig(dataparser=OSNDataParserConfig(data=scene_dir))
    datamanager = config.setup(device="cpu", test_mode="val")
    bundle, labels, weights = datamanager.supervision_rays(50, torch.Generator().manual_seed(0))
    assert len(bundle) == len(labels) == len(weights) == len(scene.keypoints) + 50 * scene.num_objects
    assert set(labels.tolist()) == set(range(scene.num_objects))
    assert torch.all(weights[len(scene.keypoints) :] == 1)


def test_supervision_boundary_pixels_lie_next_to_another_object(scene_dir, scene):
    config = OSNDataManagerConfig(dataparser=OSNDataParserConfig(data=scene_dir))
    datamanager = config.setup(device="cpu", test_mode="val")
    ids = datamanager.train_frames[1]
    registered = datamanager.scene_metadata.registered
    _, near = supervision_masks(ids, registered, scene.num_objects, gap=0, width=2)
    generator = torch.Generator().manual_seed(0)
    bundle, labels, _ = datamanager.supervision_rays(10, generator, boundary_pixels_per_object=7, boundary_width=2)
    boundary_labels = labels[len(scene.keypoints) + 10 * scene.num_objects :]
    expected = [k for k in range(scene.num_objects) for _ in range(min(7, int(near[k].sum())))]
    assert boundary_labels.tolist() == expected


def test_supervision_rays_skip_objects_where_they_are_unregistered(tmp_path):
    scene = write_scene(tmp_path / "scene", num_frames=4)
    config = OSNDataManagerConfig(dataparser=OSNDataParserConfig(data=scene.root))
    datamanager = config.setup(device="cpu", test_mode="val")
    bundle, labels, _ = datamanager.supervision_rays(10_000, torch.Generator().manual_seed(0), 10_000, 2)
    frames = bundle.camera_indices[:, 0]
    k, v = UNREGISTERED
    pixels = torch.arange(len(labels)) >= len(scene.keypoints)
    assert not ((labels == k) & (frames == v) & pixels).any()
    assert ((labels == k) & pixels).any()


def test_supervision_masks_on_a_hand_built_label_map():
    ids = torch.tensor([[[0, 1, 1, 2, 2, 2], [0, 1, 1, -1, 2, 2], [0, 0, 0, 0, 0, 2]]])
    registered = torch.ones(3, 1, dtype=torch.bool)
    inside, near = supervision_masks(ids, registered, 3, gap=0, width=1)
    assert torch.equal(inside[1], ids == 1)
    # object 2's pixels within one pixel (8-neighbourhood) of another object; the unknown label (-1) does not count
    assert near[2][0].nonzero().tolist() == [[0, 3], [1, 4], [1, 5], [2, 5]]
    # no pixel of object 1 is a pixel away from every other label
    inside, _ = supervision_masks(ids, registered, 3, gap=1, width=1)
    assert not inside[1].any()
    # a 5x5 block: one pixel from its outline leaves the inner 3x3; its ring lies within 2 pixels of the background
    ids = torch.zeros(1, 7, 7, dtype=torch.long)
    ids[0, 1:6, 1:6] = 1
    inside, near = supervision_masks(ids, torch.ones(2, 1, dtype=torch.bool), 2, gap=1, width=1)
    assert inside[1][0].nonzero().tolist() == [[r, c] for r in (2, 3, 4) for c in (2, 3, 4)]
    assert near[1][0].sum() == 8 and not near[1][0, 3, 3]
    inside, _ = supervision_masks(ids, torch.tensor([[True], [False]]), 2, gap=0, width=1)
    assert not inside[1].any() and inside[0].any()


def test_eval_images_carry_ground_truth_depth(scene_dir, scene):
    config = OSNDataManagerConfig(dataparser=OSNDataParserConfig(data=scene_dir))
    datamanager = config.setup(device="cpu", test_mode="test")
    camera, batch = datamanager.next_eval_image(0)
    index = batch["image_idx"]
    view = scene.evaluation.test_views[index]
    assert torch.allclose(batch["gt_depth"][..., 0], torch.from_numpy(read_depth(scene_dir / view.depth)))
    assert batch["object_id"].shape == (scene.camera.height, scene.camera.width, 1)


def test_eval_images_carry_the_scenes_covisibility_masks(tmp_path):
    scene = write_scene(tmp_path / "scene")
    config = OSNDataManagerConfig(dataparser=OSNDataParserConfig(data=scene.root))
    datamanager = config.setup(device="cpu", test_mode="test")
    _, batch = datamanager.next_eval_image(0)
    expected = read_mask(scene.path(scene.evaluation.test_views[0].covisibility)) != 0
    assert torch.equal(batch["covisibility_mask"][..., 0], torch.from_numpy(expected))
    assert not expected.all()


def test_missing_data_uses_the_demo_scene(tmp_path, monkeypatch):
    monkeypatch.setenv("OSN_CACHE_DIR", str(tmp_path))
    parser = OSNDataParserConfig(demo=SMALL_DEMO).setup()
    outputs = parser.get_dataparser_outputs("train")
    assert len(outputs.cameras) == SMALL_DEMO.num_frames
    assert Path(parser.config.data).is_relative_to(tmp_path)


def test_invalid_scene_is_reported_by_name(scene_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(scene_dir, broken)
    (broken / load_scene(scene_dir).frames[2].image).unlink()
    with pytest.raises(ValueError, match=r"frame 2"):
        OSNDataParserConfig(data=broken).setup().get_dataparser_outputs("train")
