"""osn-process-data on bad input: each error names the file, frame or object and what to do, and nothing
already written (an existing output, the user's files) is lost. Also: importing the authors' datasets."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.validation import load_scene
from osn_nerfstudio.process.authors import ImportAuthors, import_authors_dataset
from osn_nerfstudio.process.common import ProcessDataError
from osn_nerfstudio.process.pipeline import ProcessDataConfig, process_video, publish
from osn_nerfstudio.scripts import process_data
from process_factory import export_frames_and_masks, write_authors_dataset

DEMO = DemoSceneConfig(seed=2, width=48, height=36, num_frames=6, num_objects=2, supersampling=1, test_view_every=6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_scene(tmp_path_factory.mktemp("inputs") / "demo", DEMO)


@pytest.fixture
def inputs(demo, tmp_path):
    return export_frames_and_masks(demo, tmp_path)


def assert_nothing_written(tmp_path, output):
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging directory was left behind"


def test_unreadable_video_is_named(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ProcessDataError, match=r"clip\.mp4: .*(cannot open|decoded 0).*ffmpeg"):
        process_video(ProcessDataConfig(data=video, output_dir=tmp_path / "scene", masks=tmp_path))
    assert_nothing_written(tmp_path, tmp_path / "scene")


def test_cli_reports_bad_input_with_exit_code_1(tmp_path, monkeypatch, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(
        sys, "argv", ["osn-process-data", "video", "--data", str(video), "--output-dir", str(tmp_path / "out")]
    )
    with pytest.raises(SystemExit) as info:
        process_data.entrypoint()
    assert info.value.code == 1
    assert "clip.mp4" in capsys.readouterr().err


def test_prompt_outside_the_image_names_object_and_frame(inputs, tmp_path):
    frames, _ = inputs
    prompts = {"objects": [{"name": "box", "frames": {"2": {"points": [[20, 10], [60, 10]]}}}]}
    config = ProcessDataConfig(
        data=frames,
        output_dir=tmp_path / "scene",
        sam_checkpoint=tmp_path / "missing.pth",
        sam_prompts=json.dumps(prompts),
    )
    with pytest.raises(
        ProcessDataError, match=r"object 'box', frame 2: position \[60\.0, 10\.0\] lies outside the 48x36 frame"
    ):
        process_video(config)
    assert_nothing_written(tmp_path, tmp_path / "scene")


def test_object_never_visible_is_named(inputs, tmp_path):
    frames, masks = inputs
    config = ProcessDataConfig(
        data=frames, output_dir=tmp_path / "scene", masks=masks, object_names=["box", "sphere", "ghost"]
    )
    with pytest.raises(ProcessDataError, match=r"'ghost' \(label 3\) never visible"):
        process_video(config)
    assert_nothing_written(tmp_path, tmp_path / "scene")


def test_object_mask_folder_with_no_pixels_is_never_visible(inputs, tmp_path):
    frames, masks = inputs
    per_object = tmp_path / "per-object"
    for name, k in (("box", 1), ("empty", 7)):
        (per_object / name).mkdir(parents=True)
        for path in sorted(masks.iterdir()):
            labels = np.asarray(Image.open(path))
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(per_object / name / path.name)
    config = ProcessDataConfig(data=frames, output_dir=tmp_path / "scene", masks=per_object)
    with pytest.raises(ProcessDataError, match=r"'empty' \(label 2\) never visible"):
        process_video(config)


def test_mask_folder_with_a_wrong_frame_count_is_named(inputs, tmp_path):
    frames, masks = inputs
    sorted(masks.iterdir())[-1].unlink()
    config = ProcessDataConfig(data=frames, output_dir=tmp_path / "scene", masks=masks)
    with pytest.raises(ProcessDataError, match=rf"{masks}: holds 5 mask file\(s\) .* the video has 6 frames"):
        process_video(config)
    assert_nothing_written(tmp_path, tmp_path / "scene")


def test_mask_of_the_wrong_size_is_named(inputs, tmp_path):
    frames, masks = inputs
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "00003.png")
    with pytest.raises(ProcessDataError, match=r"00003\.png: is 10x10, but the frames are 48x36"):
        process_video(ProcessDataConfig(data=frames, output_dir=tmp_path / "scene", masks=masks))


def test_existing_output_is_kept_without_overwrite(inputs, tmp_path):
    frames, masks = inputs
    output = tmp_path / "scene"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    with pytest.raises(ProcessDataError, match="already exists; refusing to overwrite"):
        process_video(ProcessDataConfig(data=frames, output_dir=output, masks=masks))
    assert (output / "mine.txt").read_text() == "keep me"


def test_failed_run_with_overwrite_keeps_the_existing_output(inputs, tmp_path):
    frames, masks = inputs
    output = tmp_path / "scene"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    sorted(masks.iterdir())[0].unlink()
    with pytest.raises(ProcessDataError):
        process_video(ProcessDataConfig(data=frames, output_dir=output, masks=masks, overwrite=True))
    assert [p.name for p in output.iterdir()] == ["mine.txt"]


def test_publish_replaces_only_after_a_complete_build(tmp_path):
    destination = tmp_path / "scene"
    destination.mkdir()
    (destination / "old.txt").write_text("old")

    def failing(root):
        (root / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        publish(destination, overwrite=True, build=failing)
    assert [p.name for p in destination.iterdir()] == ["old.txt"]
    publish(destination, overwrite=True, build=lambda root: (root / "new.txt").write_text("new"))
    assert [p.name for p in destination.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_authors_dataset_imports_as_the_same_scene(demo, tmp_path):
    source = write_authors_dataset(demo, tmp_path / "Balloon2")
    config = ImportAuthors(data=source, output_dir=tmp_path / "scene", object_names=["box", "sphere"])
    report = import_authors_dataset(config)
    scene = load_scene(tmp_path / "scene")
    assert [o.name for o in scene.objects] == ["background", "box", "sphere"]
    assert np.array_equal(scene.registered, demo.registered)
    assert np.allclose(scene.camera_to_object[scene.registered], demo.camera_to_object[demo.registered], atol=1e-5)
    ours, theirs = (kp.select(np.lexsort((kp.frame, kp.object_id))) for kp in (scene.keypoints, demo.keypoints))
    assert np.array_equal(ours.frame, theirs.frame) and np.allclose(ours.uv, theirs.uv, atol=1e-4)
    assert np.allclose(ours.depth, theirs.depth, rtol=1e-5) and np.allclose(ours.weight, theirs.weight, rtol=1e-5)
    assert np.allclose(scene.times, np.arange(DEMO.num_frames) / (DEMO.num_frames - 1))
    for v in range(DEMO.num_frames):
        assert np.array_equal(scene.load_mask(v), demo.load_mask(v))
    assert [o.registered_frames for o in report.objects] == demo.registered.sum(axis=1).tolist()
    masks = np.stack([demo.load_mask(v) for v in range(DEMO.num_frames)])
    assert [o.visible_frames for o in report.objects] == [int((masks == k).any(axis=(1, 2)).sum()) for k in range(3)]


def test_authors_dataset_with_a_missing_array_is_named(demo, tmp_path):
    source = write_authors_dataset(demo, tmp_path / "Balloon2")
    (source / "sam_raft" / "depth" / "vid1.npy").unlink()
    with pytest.raises(ProcessDataError, match=r"vid1\.npy: missing"):
        import_authors_dataset(ImportAuthors(data=source, output_dir=tmp_path / "scene"))
    assert_nothing_written(tmp_path, tmp_path / "scene")
    shutil.rmtree(source)
