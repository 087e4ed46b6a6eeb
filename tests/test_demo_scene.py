"""The procedural demo scene: determinism, validity, and ground truth consistent with its own scene data."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from osn_nerfstudio.data import demo_scene
from osn_nerfstudio.data.demo_scene import (
    DemoSceneConfig,
    build_demo_world,
    cast_rays,
    demo_cache_dir,
    demo_scene_name,
    ensure_demo_scene,
    invert_rigid,
    make_demo_scene,
    occlusion_counts,
    pixel_rays,
    render_view,
)
from osn_nerfstudio.data.scene_format import SceneFormatError, read_amodal_depth, read_depth, read_mask
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.scripts import make_demo

SMALL = DemoSceneConfig(
    width=64,
    height=48,
    num_frames=16,
    supersampling=2,
    keypoints_per_object_per_frame=30,
    keypoint_depth_noise=0.0,
    test_view_every=4,
)
NOISY = replace(SMALL, keypoint_depth_noise=0.05)
TINY = DemoSceneConfig(width=32, height=24, num_frames=4, supersampling=1, keypoints_per_object_per_frame=10)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "clean"
    make_demo_scene(root, SMALL)
    return load_scene(root), build_demo_world(SMALL)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "noisy"
    make_demo_scene(root, NOISY)
    return load_scene(root), build_demo_world(NOISY)


def camera_points(scene, keypoints):
    """[N, 3] keypoints back-projected into their frame's camera (OpenGL axes), in their object's units."""
    cam = scene.camera
    u, v = keypoints.uv.T
    directions = np.stack([(u - cam.cx) / cam.fx, -(v - cam.cy) / cam.fy, -np.ones_like(u)], axis=1)
    return keypoints.depth[:, None] * directions


def transform(poses, points):
    """Apply per-row [N, 4, 4] poses to [N, 3] points."""
    return np.einsum("nij,nj->ni", poses[:, :3, :3], points) + poses[:, :3, 3]


def exact_background_depth(scene, world, keypoints):
    """Ground-truth z-depth (background units) of the nearest surface on each keypoint's sub-pixel ray."""
    depth = np.empty(len(keypoints))
    for v in np.unique(keypoints.frame):
        rows = keypoints.frame == v
        time = scene.frames[v].time
        rays = pixel_rays(world.camera, world.camera_to_world(time), keypoints.uv[rows])
        depth[rows] = cast_rays(world, time, *rays, shade=False)[1] / world.units[0]
    return depth


def bounding_radius(obj):
    """Radius of a sphere about the object's local origin holding its primitive."""
    if obj.shape == "box":
        return np.linalg.norm(obj.half_extent)
    if obj.shape == "cylinder":
        return np.linalg.norm(obj.half_extent[:2])
    return obj.half_extent.max()


def test_scene_validates_and_describes_itself(clean):
    scene, world = clean
    assert scene.num_objects == SMALL.num_objects + 1 and scene.num_frames == SMALL.num_frames
    assert [o.name for o in scene.objects] == ["background", "box", "sphere", "cylinder"]
    assert np.allclose(scene.times, np.arange(SMALL.num_frames) / SMALL.fps)
    assert scene.registered.all()
    assert np.all(np.bincount(scene.keypoints.object_id, minlength=scene.num_objects) > 0)
    assert len(scene.evaluation.test_views) == 4
    assert np.allclose(scene.evaluation.relative_scales, world.relative_scales)
    assert scene.evaluation.relative_scales[0] == 1.0
    assert scene.provenance["tool"] == "osn-make-demo" and scene.provenance["settings"]["seed"] == SMALL.seed


def test_same_seed_gives_identical_files_and_other_seed_differs(clean, tmp_path):
    scene, _ = clean
    again = make_demo_scene(tmp_path / "again", SMALL)
    files = sorted(p.relative_to(scene.root) for p in scene.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for name in files:
        if name.name != "scene.json":
            assert (scene.root / name).read_bytes() == (again.root / name).read_bytes(), name
    first, second = (json.loads((s.root / "scene.json").read_text()) for s in (scene, again))
    for data in (first, second):
        del data["provenance"]["created"]
    assert first == second

    other = make_demo_scene(tmp_path / "other", replace(SMALL, seed=1))
    assert not np.array_equal(other.load_image(0), scene.load_image(0))
    assert not np.allclose(other.evaluation.relative_scales, scene.evaluation.relative_scales)


def test_written_masks_and_depths_are_the_rendered_ground_truth(clean):
    scene, world = clean
    for v in (0, 7):
        view = render_view(world, world.camera_to_world(scene.frames[v].time), scene.frames[v].time, shade=False)
        assert np.array_equal(scene.load_mask(v), view.labels)
        depth = read_depth(scene.path(scene.frames[v].depth))
        assert np.allclose(depth, view.depth / world.units[0], rtol=1e-6)
        assert set(np.unique(view.labels)) == set(range(scene.num_objects)), "every object shows in these frames"
    for i, test_view in enumerate(scene.evaluation.test_views):
        view = render_view(world, world.test_camera_to_world(test_view.time, i), test_view.time, shade=False)
        assert np.array_equal(read_mask(scene.path(test_view.mask)), view.labels)
        assert np.allclose(read_depth(scene.path(test_view.depth)), view.depth / world.units[0], rtol=1e-6)


def test_amodal_depth_is_every_object_alone_and_explains_the_video(clean):
    scene, world = clean
    amodal = read_amodal_depth(scene.path(scene.evaluation.amodal_depth))
    assert amodal.shape == (scene.num_objects, scene.num_frames, scene.camera.height, scene.camera.width)
    for v in (0, 9):
        time = scene.frames[v].time
        for k in range(scene.num_objects):
            alone = render_view(world, world.camera_to_world(time), time, objects=[k], shade=False).depth
            assert np.allclose(amodal[k, v], alone / world.units[0], rtol=1e-6)
        # the nearest object alone is the one the video shows, at the depth it shows
        assert np.array_equal(amodal[:, v].argmin(0), scene.load_mask(v))
        assert np.allclose(amodal[:, v].min(0), read_depth(scene.path(scene.frames[v].depth)), rtol=1e-6)


def test_exact_valid_set_holds_the_truth_and_every_configuration_that_explains_every_pixel(clean):
    import torch

    from osn_nerfstudio.core.validity import validity
    from osn_nerfstudio.data.ground_truth import exact_cache, exact_valid_set

    scene, _ = clean
    truth = torch.from_numpy(scene.evaluation.relative_scales)
    ranges = torch.stack([truth / 4, truth * 4], dim=1)
    ranges[0] = 1.0
    exact = exact_valid_set(scene, ranges)
    assert exact.contains(truth[None]).all()
    # brute force: a configuration is in the set iff the Z-buffer of the true depths shows every pixel's object
    g = torch.Generator().manual_seed(0)
    candidates = torch.cat([exact.sample(300, g), truth * torch.exp(0.3 * torch.randn(700, len(truth), generator=g))])
    candidates[:, 0] = 1.0
    candidates = torch.minimum(torch.maximum(candidates, ranges[:, 0]), ranges[:, 1])
    explains_all = validity(exact_cache(scene), candidates, 0.5) >= 1.0 - 1e-12
    assert torch.equal(exact.contains(candidates), explains_all)
    assert explains_all[:300].all() and not explains_all[300:].all()
    # every orbiter at half or twice its scale swaps places with the centre object where they overlap
    for k in range(2, scene.num_objects):
        for factor in (0.5, 2.0):
            moved = truth.clone()
            moved[k] *= factor
            assert not exact.contains(moved[None]).any(), (k, factor)


def test_exact_cache_keeps_only_the_chosen_pixels(clean):
    import numpy as np
    import torch

    from osn_nerfstudio.data.ground_truth import exact_cache

    scene, _ = clean
    full = exact_cache(scene)
    shape = (scene.num_frames, scene.camera.height, scene.camera.width)
    assert torch.equal(exact_cache(scene, np.ones(shape, dtype=bool)).depth, full.depth)
    assert len(exact_cache(scene, np.zeros(shape, dtype=bool)).label) == 0
    first = np.zeros(shape, dtype=bool)
    first[0] = True  # the first frame's contested pixels come first in the full cache, in the same order
    part = exact_cache(scene, first)
    assert 0 < len(part.label) < len(full.label)
    assert torch.equal(part.depth, full.depth[: len(part.label)])
    assert torch.equal(part.label, full.label[: len(part.label)])


def test_keypoint_depth_in_object_units_matches_ground_truth(clean):
    scene, world = clean
    kp = scene.keypoints
    in_background_units = kp.depth * scene.evaluation.relative_scales[kp.object_id]
    assert np.allclose(in_background_units, exact_background_depth(scene, world, kp), rtol=1e-5)
    # the depth map samples the pixel centre, the keypoint its sub-pixel position
    maps = np.stack([read_depth(scene.path(f.depth)) for f in scene.frames])
    pixel = np.floor(kp.uv).astype(int)
    error = np.abs(in_background_units / maps[kp.frame, pixel[:, 1], pixel[:, 0]] - 1.0)
    assert np.median(error) < 0.005 and error.max() < 0.05


def test_noisy_keypoint_depths_follow_their_weights(noisy):
    scene, world = noisy
    kp = scene.keypoints
    log_error = np.log(
        kp.depth * scene.evaluation.relative_scales[kp.object_id] / exact_background_depth(scene, world, kp)
    )
    normalised = log_error * np.sqrt(kp.weight) / NOISY.keypoint_depth_noise
    assert np.all(np.abs(normalised) < 6.0)
    assert 0.85 < normalised.std() < 1.15
    assert np.all((kp.weight > 0) & (kp.weight <= 1)) and kp.weight.min() < 0.5 < kp.weight.max()


def test_keypoints_round_trip_through_poses_and_lie_on_their_object(clean):
    scene, _ = clean
    kp = scene.keypoints
    poses = scene.camera_to_object[kp.object_id, kp.frame]
    object_points = transform(poses, camera_points(scene, kp))
    back = transform(np.linalg.inv(poses), object_points)
    cam = scene.camera
    uv = np.stack([cam.cx + cam.fx * back[:, 0] / -back[:, 2], cam.cy - cam.fy * back[:, 1] / -back[:, 2]], axis=1)
    assert np.allclose(uv, kp.uv, atol=1e-3)
    masks = np.stack([scene.load_mask(v) for v in range(scene.num_frames)])
    pixel = np.floor(kp.uv).astype(int)
    assert np.array_equal(masks[kp.frame, pixel[:, 1], pixel[:, 0]], kp.object_id)
    lo = np.stack([o.bbox_min for o in scene.objects])[kp.object_id]
    hi = np.stack([o.bbox_max for o in scene.objects])[kp.object_id]
    assert np.all((object_points > lo) & (object_points < hi))


def test_true_relative_scales_compose_the_true_scene(clean):
    """X = s_k P_k(v)^-1 x puts every object where it truly is, in background units."""
    scene, world = clean
    kp = scene.keypoints
    scales = scene.evaluation.relative_scales
    poses = scene.camera_to_object[kp.object_id, kp.frame]
    object_points = transform(poses, camera_points(scene, kp))
    in_camera = scales[kp.object_id, None] * transform(np.linalg.inv(poses), object_points)
    in_background = transform(scene.camera_to_object[0, kp.frame], in_camera)
    # the same surface points from the world's own metric object poses
    units = world.units[kp.object_id, None]
    origins = np.stack([o.origin for o in world.objects])[kp.object_id]
    local_metres = units * (object_points - origins)
    object_to_world = np.stack([world.object_to_world(k, scene.frames[v].time) for k, v in zip(kp.object_id, kp.frame)])
    truth = transform(object_to_world, local_metres) / world.units[0] + world.objects[0].origin
    assert np.allclose(in_background, truth, atol=1e-4 * np.abs(truth).max())
    # test cameras in background units see the same ground truth as the training cameras
    for i, view in enumerate(scene.evaluation.test_views):
        expected = world.camera_to_background(world.test_camera_to_world(view.time, i))
        assert np.allclose(view.camera_to_background, expected)


def test_object_centres_project_inside_their_amodal_silhouettes(clean):
    """Camera convention check independent of the ray generator: OpenGL axes, pixel centres at +0.5."""
    scene, world = clean
    cam = scene.camera
    for v in range(0, scene.num_frames, 3):
        time = scene.frames[v].time
        camera_to_world = world.camera_to_world(time)
        for k in range(1, scene.num_objects):
            centre = invert_rigid(camera_to_world) @ world.object_to_world(k, time)[:, 3]
            u, row = cam.cx + cam.fx * centre[0] / -centre[2], cam.cy - cam.fy * centre[1] / -centre[2]
            if 0 <= u < cam.width and 0 <= row < cam.height:
                labels = render_view(world, camera_to_world, time, objects=[k], shade=False).labels
                assert labels[int(row), int(u)] == k


@pytest.mark.parametrize("seed, num_objects", [(0, 3), (1, 2), (2, 5), (3, 8)])
def test_every_foreground_object_occludes_and_is_occluded(seed, num_objects):
    config = replace(SMALL, seed=seed, num_objects=num_objects)
    world = build_demo_world(config)
    counts = occlusion_counts(world, [world.frame_time(v) for v in range(config.num_frames)])
    assert not counts[0].any(), "the room hides part of an object"
    foreground = counts[1:, 1:]
    assert np.all(foreground.sum(axis=1) > 0), "some object never hides another"
    assert np.all(foreground.sum(axis=0) > 0), "some object is never hidden by another"


@pytest.mark.parametrize("num_objects", [3, 8])
def test_objects_never_touch_and_stay_inside_the_room(num_objects):
    world = build_demo_world(replace(SMALL, num_objects=num_objects))
    times = np.linspace(0.0, SMALL.num_frames / SMALL.fps, 200)
    radii = [bounding_radius(o) for o in world.objects]
    centres = np.array([[world.object_to_world(k, t)[:3, 3] for t in times] for k in range(world.num_objects)])
    for i in range(1, world.num_objects):
        assert np.all(centres[i] - radii[i] > demo_scene.ROOM_MIN)
        assert np.all(centres[i] + radii[i] < demo_scene.ROOM_MAX)
        for j in range(i + 1, world.num_objects):
            assert np.linalg.norm(centres[i] - centres[j], axis=1).min() > radii[i] + radii[j]


def test_pose_noise_and_keypoint_registration(tmp_path):
    config = replace(TINY, pose_noise_rotation_deg=1.0, pose_noise_translation=0.01, register_only_with_keypoints=True)
    noisy = load_scene(make_demo_scene(tmp_path / "noisy", config).root)
    exact = load_scene(
        make_demo_scene(
            tmp_path / "exact", replace(config, pose_noise_rotation_deg=0.0, pose_noise_translation=0.0)
        ).root
    )
    has_keypoints = np.zeros_like(noisy.registered)
    has_keypoints[noisy.keypoints.object_id, noisy.keypoints.frame] = True
    assert np.array_equal(noisy.registered, has_keypoints)
    both = noisy.registered & exact.registered
    relative = np.linalg.inv(exact.camera_to_object[both]) @ noisy.camera_to_object[both]
    angles = np.degrees(np.arccos(np.clip((np.trace(relative[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert 0.0 < angles.max() < 6.0
    assert np.array_equal(noisy.keypoints.depth, exact.keypoints.depth)


def test_make_demo_scene_refuses_an_existing_destination(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        make_demo_scene(tmp_path / "taken", TINY)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="num_objects"):
        DemoSceneConfig(num_objects=9)


def test_demo_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OSN_CACHE_DIR", str(tmp_path))
    assert demo_cache_dir() == tmp_path / "demo"
    monkeypatch.delenv("OSN_CACHE_DIR")
    assert demo_cache_dir() == Path.home() / ".cache" / "osn-nerfstudio" / "demo"


def test_ensure_demo_scene_generates_once_then_reuses(monkeypatch, tmp_path):
    calls = []
    generate = demo_scene.make_demo_scene
    monkeypatch.setattr(demo_scene, "make_demo_scene", lambda *args: calls.append(args) or generate(*args))
    root = ensure_demo_scene(TINY, cache_dir=tmp_path)
    assert root == tmp_path / demo_scene_name(TINY) and len(calls) == 1
    stamp = (root / "scene.json").stat().st_mtime_ns
    assert ensure_demo_scene(TINY, cache_dir=tmp_path) == root
    assert len(calls) == 1 and (root / "scene.json").stat().st_mtime_ns == stamp
    assert demo_scene_name(replace(TINY, seed=5)) != demo_scene_name(TINY)


def test_ensure_demo_scene_never_overwrites_a_different_directory(tmp_path):
    other = replace(TINY, seed=7)
    squatter = tmp_path / demo_scene_name(other)
    squatter.mkdir()
    (squatter / "notes.txt").write_text("mine")
    with pytest.raises(SceneFormatError, match="Delete"):
        ensure_demo_scene(other, cache_dir=tmp_path)
    assert (squatter / "notes.txt").read_text() == "mine"
    # a valid demo scene made with other settings is not reused either
    shutil.rmtree(squatter)
    make_demo_scene(squatter, TINY)
    with pytest.raises(SceneFormatError, match="other settings"):
        ensure_demo_scene(other, cache_dir=tmp_path)


def test_cli_writes_a_scene_and_refuses_to_overwrite(monkeypatch, tmp_path, capsys):
    output = tmp_path / "cli"
    args = ["osn-make-demo", "--output", str(output), "--width", "32", "--height", "24", "--num-frames", "4"]
    monkeypatch.setattr(sys, "argv", args)
    make_demo.entrypoint()
    assert load_scene(output).num_frames == 4
    with pytest.raises(SystemExit) as exit_info:
        make_demo.entrypoint()
    assert exit_info.value.code == 1
    assert "refusing to overwrite" in capsys.readouterr().err
