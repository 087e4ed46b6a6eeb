"""The OSN scene format: round trip, every validation rule, staged writing and the validator CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
from PIL import Image

import scene_factory
from osn_nerfstudio.data.scene_format import (
    KEYPOINTS_FILE,
    POSES_FILE,
    SCENE_FILE,
    SceneFormatError,
    read_depth,
    read_mask,
    read_rgb,
    read_scene,
    staged_directory,
    write_mask,
    write_scene_metadata,
)
from osn_nerfstudio.data.validation import SceneValidationError, load_scene, validate_scene

METADATA_FILES = (SCENE_FILE, POSES_FILE, KEYPOINTS_FILE)


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    root = tmp_path / "scene"
    scene_factory.write_scene(root)
    return root


# --------------------------------------------------------------------------------------------
# Valid scenes and the round trip


def test_factory_scene_is_valid_and_consistent(scene_dir: Path) -> None:
    scene = load_scene(scene_dir)
    assert (scene.num_objects, scene.num_frames) == (3, 4)
    assert not scene.registered[scene_factory.UNREGISTERED]
    kp = scene.keypoints
    for i in range(len(kp)):
        k, v = int(kp.object_id[i]), int(kp.frame[i])
        assert scene.load_mask(v)[int(kp.uv[i, 1]), int(kp.uv[i, 0])] == k
        # Unproject in the object's own units and map into the object: the point is on its box.
        cam = scene.camera
        ray = np.array([(kp.uv[i, 0] - cam.cx) / cam.fx, -(kp.uv[i, 1] - cam.cy) / cam.fy, -1.0])
        x = scene.camera_to_object[k, v] @ np.append(kp.depth[i] * ray, 1.0)
        box = scene.objects[k]
        assert np.all(x[:3] >= box.bbox_min - 1e-4) and np.all(x[:3] <= box.bbox_max + 1e-4)
        assert np.isclose(np.abs(x[:3] / box.bbox_max).max(), 1.0, atol=1e-4)


@pytest.mark.parametrize("options", [dict(evaluation=False, depth=False), dict(num_objects=1), dict(num_frames=1)])
def test_smaller_scenes_are_valid(tmp_path: Path, options: dict) -> None:
    scene_factory.write_scene(tmp_path / "scene", **options)
    load_scene(tmp_path / "scene")


def test_round_trip_keeps_every_field_and_rewrites_identical_files(tmp_path: Path) -> None:
    data = scene_factory.build_scene(tmp_path / "a", ignore_label=254)
    original = data.write()
    scene = read_scene(tmp_path / "a")

    assert scene.camera == original.camera
    assert scene.frames == original.frames
    assert scene.mask_ignore_label == 254
    assert scene.provenance == original.provenance
    assert [o.name for o in scene.objects] == [o.name for o in original.objects]
    for got, want in zip(scene.objects, original.objects):
        np.testing.assert_array_equal(got.bbox_min, want.bbox_min)
        np.testing.assert_array_equal(got.bbox_max, want.bbox_max)
    np.testing.assert_array_equal(scene.registered, original.registered)
    np.testing.assert_array_equal(scene.camera_to_object, original.camera_to_object)  # NaN where unregistered
    assert np.isnan(scene.camera_to_object[scene_factory.UNREGISTERED]).all()
    for name in ("object_id", "frame", "uv", "depth", "weight"):
        np.testing.assert_array_equal(getattr(scene.keypoints, name), getattr(original.keypoints, name))
    assert scene.keypoints.object_id.dtype == np.int64 and scene.keypoints.uv.dtype == np.float64
    np.testing.assert_array_equal(scene.evaluation.relative_scales, original.evaluation.relative_scales)
    (view,), (want,) = scene.evaluation.test_views, original.evaluation.test_views
    assert (view.image, view.time, view.mask, view.depth) == (want.image, want.time, want.mask, want.depth)
    np.testing.assert_array_equal(view.camera_to_background, want.camera_to_background)

    for relative, rgb in data.images.items():
        np.testing.assert_array_equal(read_rgb(scene.path(relative)), rgb)
    for relative, labels in data.masks.items():
        np.testing.assert_array_equal(read_mask(scene.path(relative)), labels)
    for relative, depth in data.depths.items():
        np.testing.assert_array_equal(read_depth(scene.path(relative)), depth)

    scene.root = tmp_path / "b"
    write_scene_metadata(scene)
    for name in METADATA_FILES:
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_sixteen_bit_masks_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 300], [65535, 2, 0]])
    write_mask(tmp_path / "m.png", labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), labels)


def test_scene_without_frames_is_rejected_not_crashed(scene_dir: Path) -> None:
    scene = read_scene(scene_dir)
    scene.frames = []
    with pytest.raises(SceneValidationError, match="no frames"):
        validate_scene(scene)


# --------------------------------------------------------------------------------------------
# One case per kind of bad scene. Each mutates a valid scene on disk; the error must name the
# culprit and say what is wrong.

Mutation = Callable[[Path], None]


def _json(edit: Callable[[dict], object]) -> Mutation:
    return lambda root: scene_factory.edit_json(root, edit)


def _npz(name: str, edit: Callable[[dict], object]) -> Mutation:
    return lambda root: scene_factory.edit_npz(root, name, edit)


def _poses(edit: Callable[[dict], object]) -> Mutation:
    return _npz(POSES_FILE, edit)


def _keypoints(edit: Callable[[dict], object]) -> Mutation:
    return _npz(KEYPOINTS_FILE, edit)


def _set_keypoint(row: int, **values) -> Mutation:
    def edit(arrays: dict) -> None:
        for key, value in values.items():
            arrays[key][row] = value

    return _keypoints(edit)


def _add_keypoint(object_id: int, frame: int, uv=(8.5, 6.5), depth=1.0, weight=1.0) -> Mutation:
    def edit(arrays: dict) -> None:
        for key, value in dict(object_id=object_id, frame=frame, uv=[uv], depth=depth, weight=weight).items():
            arrays[key] = np.concatenate(
                [arrays[key], np.asarray(value, arrays[key].dtype).reshape(1, *arrays[key].shape[1:])]
            )

    return _keypoints(edit)


def _pose_block(k: int, v: int, matrix: np.ndarray) -> Mutation:
    def edit(arrays: dict) -> None:
        arrays["camera_to_object"][k, v, :3, :3] = matrix @ arrays["camera_to_object"][k, v, :3, :3]

    return _poses(edit)


def _write_file(relative: str, content: bytes) -> Mutation:
    return lambda root: (root / relative).write_bytes(content)


def _truncate(relative: str, size: int) -> Mutation:
    return lambda root: (root / relative).write_bytes((root / relative).read_bytes()[:size])


def _remove(relative: str) -> Mutation:
    return lambda root: (root / relative).unlink()


def _image(relative: str, array: np.ndarray) -> Mutation:
    return lambda root: Image.fromarray(array).save(root / relative)


def _mask_values(relative: str, edit: Callable[[np.ndarray], object]) -> Mutation:
    def mutate(root: Path) -> None:
        labels = read_mask(root / relative)
        edit(labels)
        write_mask(root / relative, labels)

    return mutate


def _drop_keypoints_of(k: int) -> Mutation:
    def edit(arrays: dict) -> None:
        keep = arrays["object_id"] != k
        for key in arrays:
            arrays[key] = arrays[key][keep]

    return _keypoints(edit)


def _save_array(relative: str, array: np.ndarray) -> Mutation:
    return lambda root: np.save(root / relative, array)


def _set(*path, value) -> Mutation:
    def edit(data: dict) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return _json(edit)


def _delete(*path) -> Mutation:
    def edit(data: dict) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return _json(edit)


REFLECTION = np.diag([1.0, 1.0, -1.0])
SHEAR = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
# Keypoint rows 0-2 belong to the background in frame 0 (scene_factory's ordering); row 3 to object 1.
OBJ1_ROW = 3


def _case(name: str, mutate: Mutation, *fragments: str):
    return pytest.param(mutate, fragments, id=name)


# fmt: off  (one case per entry, its expected fragments on a second line where the first is full: reads as a table)
BAD_SCENES = [
    _case("missing-scene-json", _remove(SCENE_FILE), SCENE_FILE, "missing"),
    _case("invalid-json", _write_file(SCENE_FILE, b'{"format": "osn-scene", '), SCENE_FILE, "not valid JSON"),
    _case("wrong-format-name", _set("format", value="colmap"), SCENE_FILE, "not an OSN scene", "'colmap'"),
    _case("unsupported-version", _set("version", value=2), SCENE_FILE, "version 2 is not supported"),
    _case("required-field-missing", _delete("camera"), SCENE_FILE, "required field 'camera' is missing"),
    _case("frame-field-missing", _delete("frames", 2, "mask"), "frames[2]", "required field 'mask' is missing"),
    _case("field-wrong-type", _set("camera", "width", value="wide"), "camera", "'width'", "must be a number"),
    _case("test-view-field-missing", _delete("evaluation", "test_views", 0, "time"),
          "evaluation.test_views[0]", "'time'"),
    _case("missing-image", _remove("images/00002.png"), "frame 2", "images/00002.png", "missing"),
    _case("unreadable-image", _write_file("images/00001.png", b"\x00garbage" * 9),
          "frame 1", "images/00001.png", "cannot be read"),
    _case("truncated-image", _truncate("images/00001.png", 120), "frame 1", "images/00001.png", "cannot be read"),
    _case("image-wrong-size", _image("images/00000.png", np.zeros((10, 10, 3), np.uint8)),
          "frame 0", "images/00000.png", "10x10", "16x12"),
    _case("missing-mask", _remove("masks/00003.png"), "frame 3", "masks/00003.png", "missing"),
    _case("mask-wrong-size", _image("masks/00001.png", np.zeros((12, 15), np.uint8)),
          "frame 1", "masks/00001.png", "15x12", "16x12"),
    _case("mask-unknown-label", _mask_values("masks/00002.png", lambda m: m.__setitem__((5, 5), 7)),
          "frame 2", "masks/00002.png", "[7]", "name no object"),
    _case("mask-is-rgb", _image("masks/00000.png", np.zeros((12, 16, 3), np.uint8)),
          "frame 0", "masks/00000.png", "single-channel", "mode RGB"),
    _case("poses-missing", _remove(POSES_FILE), POSES_FILE, "missing"),
    _case("poses-array-missing", _poses(lambda a: a.pop("registered")), POSES_FILE, "missing array(s) registered"),
    _case("keypoints-not-npz", _write_file(KEYPOINTS_FILE, b"not a zip archive"),
          KEYPOINTS_FILE, "not an .npz archive"),
    _case("keypoint-ids-not-integers",
          _keypoints(lambda a: a.__setitem__("object_id", a["object_id"].astype(np.float32))),
          KEYPOINTS_FILE, "object_id", "float32", "integers"),
    _case("poses-frame-count", _poses(lambda a: a.update({k: v[:, :3] for k, v in a.items()})),
          POSES_FILE, "[3, 3, 4, 4]", "expected [3, 4, 4, 4]", "4 frames"),
    _case("poses-object-count", _poses(lambda a: a.update({k: v[:2] for k, v in a.items()})),
          POSES_FILE, "[2, 4, 4, 4]", "3 objects"),
    _case("pose-not-finite", _poses(lambda a: a["camera_to_object"].__setitem__((1, 2, 0, 3), np.inf)),
          POSES_FILE, "object 1 'red-box'", "[2]", "non-finite"),
    _case("pose-scaled", _pose_block(1, 1, 1.5 * np.eye(3)),
          POSES_FILE, "object 1 'red-box'", "frame(s) [1]", "not rigid"),
    _case("pose-sheared", _pose_block(2, 3, SHEAR), POSES_FILE, "object 2 'blue-box'", "frame(s) [3]", "not rigid"),
    _case("pose-reflection", _pose_block(0, 2, REFLECTION),
          POSES_FILE, "object 0 'background'", "frame(s) [2]", "not rigid", "reflection"),
    _case("pose-bottom-row", _poses(lambda a: a["camera_to_object"].__setitem__((1, 0, 3, 0), 0.5)),
          POSES_FILE, "object 1 'red-box'", "frame(s) [0]", "bottom row"),
    _case("background-unregistered", _poses(lambda a: a["registered"].__setitem__((0, 2), False)),
          POSES_FILE, "background", "registered in every frame", "frame(s) [2]"),
    _case("object-never-registered", _poses(lambda a: a["registered"].__setitem__(1, False)),
          POSES_FILE, "object 1 'red-box'", "not registered in any frame"),
    _case("object-without-keypoints", _drop_keypoints_of(2), KEYPOINTS_FILE, "object 2 'blue-box'", "has no keypoints"),
    _case("keypoint-outside-image", _set_keypoint(OBJ1_ROW, uv=(20.0, 5.0)),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "object 1 'red-box'", "frame 0", "outside the 16x12 image"),
    _case("keypoint-in-unregistered-frame", _add_keypoint(2, 0),
          KEYPOINTS_FILE, "object 2 'blue-box'", "frame 0", "not registered"),
    _case("keypoint-zero-depth", _set_keypoint(OBJ1_ROW, depth=0.0),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "object 1 'red-box'", "depth", "positive"),
    _case("keypoint-negative-depth", _set_keypoint(OBJ1_ROW, depth=-2.0),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "depth", "positive"),
    _case("keypoint-zero-weight", _set_keypoint(OBJ1_ROW, weight=0.0),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "weight outside (0, 1]"),
    _case("keypoint-weight-above-one", _set_keypoint(OBJ1_ROW, weight=1.5),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "weight outside (0, 1]"),
    _case("keypoint-unknown-object", _set_keypoint(OBJ1_ROW, object_id=5),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "object 5", "outside 0..2"),
    _case("keypoint-unknown-frame", _set_keypoint(OBJ1_ROW, frame=9),
          KEYPOINTS_FILE, f"row {OBJ1_ROW}", "frame 9", "outside 0..3"),
    _case("keypoint-arrays-disagree", _keypoints(lambda a: a.__setitem__("depth", a["depth"][:-1])),
          KEYPOINTS_FILE, "depth has", "disagree"),
    _case("times-not-increasing", _set("frames", 2, "time", value=0.25),
          SCENE_FILE, "frame 2", "images/00002.png", "strictly increase"),
    _case("bbox-max-not-above-min", _set("objects", 1, "bbox_max", value=[0.6, -0.6, 0.6]),
          SCENE_FILE, "object 1 'red-box'", "bounding box", "not above min", "along y"),
    _case("bbox-wrong-length", _set("objects", 2, "bbox_min", value=[0.0, 0.0]),
          SCENE_FILE, "object 2 'blue-box'", "3 finite numbers"),
    _case("duplicate-object-names", _set("objects", 2, "name", value="red-box"),
          SCENE_FILE, "'red-box'", "objects [1, 2]", "unique"),
    _case("ignore-label-collides", _set("mask_ignore_label", value=1),
          SCENE_FILE, "mask_ignore_label 1", "object 1 'red-box'"),
    _case("camera-bad-focal", _set("camera", "fx", value=0.0), SCENE_FILE, "fx=0.0", "positive"),
    _case("relative-scales-length", _set("evaluation", "relative_scales", value=[1.0, 0.5]),
          SCENE_FILE, "relative_scales", "2 entries for 3 objects"),
    _case("relative-scales-background", _set("evaluation", "relative_scales", value=[2.0, 0.5, 2.0]),
          SCENE_FILE, "relative_scales", "entry 0", "background", "must be 1"),
    _case("relative-scales-non-positive", _set("evaluation", "relative_scales", value=[1.0, 0.0, 2.0]),
          SCENE_FILE, "relative_scales", "positive"),
    _case("test-view-missing-image", _remove("test/00000.png"),
          "evaluation.test_views[0]", "test/00000.png", "missing"),
    _case("test-view-time-outside", _set("evaluation", "test_views", 0, "time", value=9.0),
          "evaluation.test_views[0]", "time 9.0", "outside the video"),
    _case("test-view-pose-not-rigid",
          _set("evaluation", "test_views", 0, "camera_to_background", value=(2 * np.eye(4)).tolist()),
          "evaluation.test_views[0]", "camera_to_background", "not rigid"),
    _case("test-view-mask-unknown-label", _mask_values("test/00000_mask.png", lambda m: m.__setitem__((0, 0), 9)),
          "evaluation.test_views[0]", "test/00000_mask.png", "[9]"),
    _case("depth-wrong-shape", _save_array("depth/00001.npy", np.ones((16, 12), np.float32)),
          "frame 1", "depth/00001.npy", "[16, 12]", "expected [12, 16]"),
    _case("depth-negative", _save_array("depth/00002.npy", -np.ones((12, 16), np.float32)),
          "frame 2", "depth/00002.npy", "negative"),
    _case("test-view-depth-wrong-shape", _save_array("test/00000_depth.npy", np.ones((3,), np.float32)),
          "evaluation.test_views[0]", "test/00000_depth.npy", "[3]"),
    _case("test-view-covisibility-wrong-size", _image("test/00000_covisible.png", np.zeros((12, 15), np.uint8)),
          "evaluation.test_views[0]", "co-visibility mask", "15x12"),
    _case("amodal-depth-missing", _remove("ground_truth/amodal_depth.npy"), "evaluation.amodal_depth", "missing"),
    _case("amodal-depth-wrong-shape", _save_array("ground_truth/amodal_depth.npy", np.ones((3, 4, 16, 12), np.float32)),
          "evaluation.amodal_depth", "[3, 4, 16, 12]", "expected [3, 4, 12, 16]"),
    _case("amodal-depth-negative", _save_array("ground_truth/amodal_depth.npy", -np.ones((3, 4, 12, 16), np.float32)),
          "evaluation.amodal_depth", "negative"),
]
# fmt: on


@pytest.mark.parametrize("mutate, fragments", BAD_SCENES)
def test_validator_rejects_bad_scene(scene_dir: Path, mutate: Mutation, fragments: tuple) -> None:
    mutate(scene_dir)
    with pytest.raises(SceneFormatError) as caught:
        load_scene(scene_dir)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    if isinstance(caught.value, SceneValidationError):
        # Each rule names its culprit in its own line.
        assert any(all(f in p for f in fragments) for p in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_at_once(scene_dir: Path) -> None:
    mutations: List[Mutation] = [
        _remove("images/00002.png"),
        _pose_block(1, 1, 1.5 * np.eye(3)),
        _set("objects", 2, "name", value="red-box"),
        _set_keypoint(OBJ1_ROW, weight=1.5),
        _set("evaluation", "test_views", 0, "time", value=9.0),
    ]
    for mutate in mutations:
        mutate(scene_dir)
    with pytest.raises(SceneValidationError) as caught:
        load_scene(scene_dir)
    problems = caught.value.problems
    assert len(problems) == len(mutations), problems
    message = str(caught.value)
    for fragment in ("images/00002.png", "not rigid", "unique", "weight", "outside the video"):
        assert fragment in message
    assert f"{len(mutations)} problems" in message


def test_long_problem_lists_are_shortened(tmp_path: Path) -> None:
    scene_factory.write_scene(tmp_path, num_frames=12, evaluation=False)
    for v in range(12):
        _remove(f"images/{v:05d}.png")(tmp_path)
        _remove(f"masks/{v:05d}.png")(tmp_path)
    scene = read_scene(tmp_path)
    with pytest.raises(SceneValidationError) as caught:
        validate_scene(scene)
    assert len(caught.value.problems) == 24
    assert "24 problems" in str(caught.value) and "... and 4 more" in str(caught.value)
    validate_scene(scene, check_files=False)  # the metadata alone is fine


# --------------------------------------------------------------------------------------------
# staged_directory


def _entries(path: Path) -> List[str]:
    return sorted(p.name for p in path.iterdir())


def test_staged_directory_refuses_existing_destination(tmp_path: Path) -> None:
    destination = tmp_path / "scene"
    destination.mkdir()
    (destination / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_directory(destination) as staging:
            (staging / "keep.txt").write_text("overwritten")
    assert (destination / "keep.txt").read_text() == "precious"
    assert _entries(destination) == ["keep.txt"]
    assert _entries(tmp_path) == ["scene"]


def test_staged_directory_leaves_nothing_on_error(tmp_path: Path) -> None:
    destination = tmp_path / "out" / "scene"
    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_directory(destination) as staging:
            scene_factory.build_scene(staging).write()
            raise RuntimeError("interrupted")
    assert not destination.exists()
    assert _entries(tmp_path / "out") == []


def test_staged_directory_publishes_complete_scene(tmp_path: Path) -> None:
    destination = tmp_path / "scene"
    with staged_directory(destination) as staging:
        data = scene_factory.build_scene(staging)
        data.write()
        assert not destination.exists()  # nothing is visible until the block ends
    assert _entries(tmp_path) == ["scene"]
    load_scene(destination)
    # Permissions as for any directory the user creates (tempfile would give 0700).
    (tmp_path / "plain").mkdir()
    assert destination.stat().st_mode == (tmp_path / "plain").stat().st_mode


# --------------------------------------------------------------------------------------------
# osn-validate-scene


def _validate_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "osn_nerfstudio.scripts.validate_scene", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_summarises_valid_scene(scene_dir: Path) -> None:
    result = _validate_cli(str(scene_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for fragment in ("valid", "16x12", "red-box", "blue-box", "background", "3/4", "relative scales"):
        assert fragment in out, f"{fragment!r} not in:\n{out}"


def test_cli_reports_invalid_scene(scene_dir: Path) -> None:
    _pose_block(1, 1, 1.5 * np.eye(3))(scene_dir)
    _remove("masks/00003.png")(scene_dir)
    result = _validate_cli(str(scene_dir))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    for fragment in ("2 problems", "object 1 'red-box'", "not rigid", "masks/00003.png"):
        assert fragment in output, f"{fragment!r} not in:\n{output}"


def test_cli_reports_missing_directory(tmp_path: Path) -> None:
    result = _validate_cli(str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "does not exist" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# docs/scene-format.md


def test_documented_example_writes_a_valid_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "scene-format.md").read_text()
    example = doc.split("## Worked example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/scene-format.md", "exec"), {})
    scene = load_scene(tmp_path / "my-scene")
    assert [o.name for o in scene.objects] == ["background", "car"]
    assert _entries(tmp_path) == ["my-scene"]
