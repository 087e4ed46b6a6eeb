"""osn-render (ns-render at a chosen configuration) and plain ns-render on a tiny osn run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import command
from osn_nerfstudio.scripts.render import (
    ConfigurationChoice,
    ConfigurationError,
    grid,
    render_frames,
    resolve_configuration,
)


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def pipeline(tiny_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_run / "config.yml", test_mode="test")
    return pipeline


def camera_path_json(pipeline, frames) -> dict:
    """A viewer-style camera path through training cameras ``frames``, with their times."""
    cameras = pipeline.datamanager.train_dataset.cameras
    height, width = int(cameras.height[0]), int(cameras.width[0])
    fov = float(2 * np.degrees(np.arctan(height / 2 / float(cameras.fy[0]))))
    path = []
    for frame in frames:
        pose = torch.eye(4)
        pose[:3] = cameras.camera_to_worlds[frame]
        path.append({"camera_to_world": pose.flatten().tolist(), "fov": fov, "aspect": width / height,
                     "render_time": float(cameras.times[frame])})
    return {"camera_type": "perspective", "render_height": height, "render_width": width, "seconds": 1.0,
            "camera_path": path}


def image_sizes(folder: Path) -> list:
    return [Image.open(p).size for p in sorted(folder.iterdir())]


def test_camera_path_renders_every_camera_at_the_chosen_configuration(pipeline, tiny_run: Path, tmp_path: Path):
    path = tmp_path / "path.json"
    path.write_text(json.dumps(camera_path_json(pipeline, [0, 4, 9])))
    out = tmp_path / "path"
    result = run(command("osn-render"), "camera-path", "--load-config", str(tiny_run / "config.yml"),
                 "--camera-path-filename", str(path), "--output-path", str(out), "--output-format", "images",
                 "--ground-truth", "True")
    assert "Rendering at the ground-truth configuration" in result.stdout.replace("\n", " ")
    assert image_sizes(out) == [(48, 36)] * 3


def test_interpolate_and_dataset_render_expected_files(pipeline, tiny_run: Path, tmp_path: Path):
    names = pipeline.model.object_names
    out = tmp_path / "interpolate"
    run(command("osn-render"), "interpolate", "--load-config", str(tiny_run / "config.yml"), "--output-path", str(out),
        "--output-format", "images", "--interpolation-steps", "2", "--scales", f"{names[1]}=1.5")
    num_eval = len(pipeline.datamanager.eval_dataset)
    assert image_sizes(out) == [(48, 36)] * (2 * (num_eval - 1))  # 2 steps between consecutive cameras

    # plain ns-render renders every output the model lists, at the run's own configuration
    out = tmp_path / "dataset"
    run(command("ns-render"), "dataset", "--load-config", str(tiny_run / "config.yml"), "--output-path", str(out),
        "--split", "test")
    rendered = {p.name for p in (out / "test").iterdir()}
    assert {"rgb", "depth", "accumulation", "segmentation", "gt-rgb"} <= rendered
    for name in rendered:
        assert len(list((out / "test" / name).rglob("*.*"))) == num_eval, name


def test_configurations_grid_writes_one_tile_per_configuration(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "grid.png"
    run(command("osn-render"), "configurations", "--load-config", str(tiny_run / "config.yml"),
        "--output-path", str(out), "--num", "4", "--frame", "5")
    assert Image.open(out).size == (2 * 48 + 2, 2 * 36 + 2)
    assert len(json.loads(out.with_suffix(".json").read_text())["configurations"]) == 4
    # nothing a user made is overwritten
    failed = subprocess.run([command("osn-render"), "configurations", "--load-config", str(tiny_run / "config.yml"),
                             "--output-path", str(out)], capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "--overwrite" in failed.stderr + failed.stdout


def test_configurations_video_of_a_camera_path(pipeline, tiny_run: Path, tmp_path: Path):
    import mediapy

    path = tmp_path / "path.json"
    path.write_text(json.dumps(camera_path_json(pipeline, [0, 3, 6, 9])))
    out = tmp_path / "grid.mp4"
    run(command("osn-render"), "configurations", "--load-config", str(tiny_run / "config.yml"),
        "--output-path", str(out), "--num", "2", "--camera-path-filename", str(path))
    video = mediapy.read_video(out)
    assert video.shape[0] == 4 and video.shape[1:3] == (36, 2 * 48 + 2)


def test_two_configurations_differ_only_where_objects_overlap(pipeline):
    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[5:6]
    lo, hi = model.scale_range[1].tolist()
    near, far = model.render_scales.clone().cpu(), model.render_scales.clone().cpu()
    near[1], far[1] = lo, hi
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera)
    alone = torch.stack([outputs[f"accumulation_{name}"][..., 0] for name in model.object_names], dim=-1)
    overlap = (alone > 1e-3).sum(-1) >= 2
    first, second = (render_frames(pipeline, camera, scales, "rgb")[0].astype(int) for scales in (near, far))
    difference = np.abs(first - second).max(-1)
    assert difference[overlap.numpy()].max() > 20, "moving the object from front to back must change the image"
    assert difference[~overlap.numpy()].max() <= 1, "pixels with a single object must not depend on the scales"


def test_configuration_choices_are_checked(pipeline, tmp_path: Path):
    model = pipeline.model
    names = model.object_names
    assert torch.equal(resolve_configuration(model, ConfigurationChoice(ground_truth=True)), model.true_scales.cpu())
    chosen = resolve_configuration(model, ConfigurationChoice(scales=(f"{names[1]}=2.5",)))
    assert chosen[1] == 2.5 and chosen[0] == 1.0
    file = tmp_path / "configurations.json"
    file.write_text(json.dumps({"configurations": [{"scales": {names[0]: 1.0, names[1]: 0.7}}]}))
    assert resolve_configuration(model, ConfigurationChoice(configurations_file=file))[1] == pytest.approx(0.7)
    with pytest.raises(ConfigurationError, match="Unknown object 'teapot'"):
        resolve_configuration(model, ConfigurationChoice(scales=("teapot=1",)))
    with pytest.raises(ConfigurationError, match="positive"):
        resolve_configuration(model, ConfigurationChoice(scales=(f"{names[1]}=-1",)))
    with pytest.raises(ConfigurationError, match="--index 3"):
        resolve_configuration(model, ConfigurationChoice(configurations_file=file, index=3))
    with pytest.raises(ConfigurationError, match="NAME=VALUE"):
        resolve_configuration(model, ConfigurationChoice(scales=(f"{names[1]}:2",)))
    with pytest.raises(ConfigurationError, match="one of"):
        resolve_configuration(model, ConfigurationChoice(scales=(f"{names[1]}=1",), ground_truth=True))


def test_grid_layout():
    tiles = [np.full((2, 3, 3), i, np.uint8) for i in range(3)]
    canvas = grid(tiles, columns=2, gap=1)
    assert canvas.shape == (5, 7, 3)
    assert (canvas[:2, :3] == 0).all() and (canvas[:2, 4:] == 1).all() and (canvas[3:, :3] == 2).all()
    assert (canvas[2] == 255).all() and (canvas[3:, 4:] == 255).all()


def test_configurations_grid_tiles_carry_captions(pipeline, tiny_run: Path, tmp_path: Path):
    from osn_nerfstudio.scripts.render import Shown, with_caption

    names = pipeline.model.object_names
    scales = torch.tensor([1.0, *pipeline.model.true_scales[1:].tolist()])
    file = tmp_path / "configurations.json"
    file.write_text(json.dumps({"configurations": [
        {"index": 7, "scales": dict(zip(names, scales.tolist())), "osn_score": 0.25, "exact_validity": 0.75}]}))
    out = tmp_path / "one.png"
    run(command("osn-render"), "configurations", "--load-config", str(tiny_run / "config.yml"),
        "--output-path", str(out), "--configurations-file", str(file), "--num", "1", "--frame", "5")
    tile = np.asarray(Image.open(out).convert("RGB")).astype(int)
    bare = render_frames(pipeline, pipeline.datamanager.train_dataset.cameras[5:6], scales, "rgb")[0]
    assert tile.shape == bare.shape  # captions are drawn on the tile: the grid keeps its size
    caption = Shown("#7", scales, 0.25, 0.75).caption(names)
    scales_line = "  ".join(f"{n}={s:.3g}" for n, s in zip(names[1:], scales.tolist()[1:]))
    assert caption == ["#7  score 0.25  exact 0.75", scales_line]
    assert np.abs(tile - with_caption(bare, caption)).max() <= 2, "the tile is the render with its caption"
    assert np.abs(tile - bare).max() > 100, "and differs from the bare render where the caption is"
