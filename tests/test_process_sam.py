"""segment-anything masks with a small randomly initialised SAM: the checkpoint is loaded for real (its
model type read from tensor shapes), prompts reach SAM, and later frames are prompted from the previous
frame's mask carried forward by the optical flow. Mask quality is not asserted (the weights are random)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l

from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.process.common import ProcessDataError
from osn_nerfstudio.process.flow import FlowConfig, compute_flow, warp_labels
from osn_nerfstudio.process.frames import FrameSamplingConfig, read_frames
from osn_nerfstudio.process.pipeline import ProcessDataConfig, process_video
from osn_nerfstudio.process.sam import (
    MIN_AREA,
    SamArchitecture,
    build_sam,
    load_sam,
    prompt_from_mask,
    sam_architecture,
    sam_masks,
)
from process_factory import export_frames_and_masks

TINY = SamArchitecture(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, image_size=256)
DEMO = DemoSceneConfig(seed=0, width=64, height=48, num_frames=6, num_objects=2, supersampling=1, test_view_every=6)
PROMPTS = {
    "objects": [
        {"name": "box", "frames": {"0": {"box": [20, 10, 44, 34], "points": [[32, 22]]}, "4": {"points": [[30, 20]]}}},
        {"name": "ball", "frames": {"0": {"points": [[50, 30], [52, 32]], "labels": [1, 0]}}},
    ]
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("sam-video")
    scene = make_demo_scene(work / "demo", DEMO)
    return export_frames_and_masks(scene, work)[0]


@pytest.mark.parametrize(
    "build, name, depth, heads, global_blocks",
    [
        (build_sam_vit_b, "vit_b", 12, 12, (2, 5, 8, 11)),
        (build_sam_vit_l, "vit_l", 24, 16, (5, 11, 17, 23)),
        (build_sam_vit_h, "vit_h", 32, 16, (7, 15, 23, 31)),
    ],
)
def test_released_model_types_are_read_from_tensor_shapes(build, name, depth, heads, global_blocks):
    with torch.device("meta"):  # shapes only: no memory, no weights
        architecture = sam_architecture(build().state_dict())
    assert architecture.name == name
    assert (architecture.depth, architecture.num_heads, architecture.global_attn_indexes) == (
        depth, heads, global_blocks
    )
    assert (architecture.window_size, architecture.image_size, architecture.prompt_embed_dim) == (14, 1024, 256)


def test_checkpoint_loads_into_the_architecture_it_describes(checkpoint):
    model, architecture = load_sam(checkpoint)
    assert architecture == TINY
    assert architecture.name == "custom ViT (embed dim 32, depth 2, 2 heads)"
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_prompts_and_flow_propagation_reach_sam(checkpoint, frames_dir, monkeypatch):
    frames = read_frames(frames_dir, FrameSamplingConfig(downscale=2))
    flow = compute_flow(frames.images, FlowConfig())
    calls = []  # (frame, box, points) of every SAM prediction
    current = {}
    real_set_image, real_predict = SamPredictor.set_image, SamPredictor.predict

    def set_image(self, image, *args, **kwargs):
        current["frame"] = next(v for v in range(frames.num_frames) if np.array_equal(frames.images[v], image))
        return real_set_image(self, image, *args, **kwargs)

    def predict(self, point_coords=None, point_labels=None, box=None, **kwargs):
        calls.append((current["frame"], box, point_coords, point_labels))
        return real_predict(self, point_coords=point_coords, point_labels=point_labels, box=box, **kwargs)

    monkeypatch.setattr(SamPredictor, "set_image", set_image)
    monkeypatch.setattr(SamPredictor, "predict", predict)
    labels, names, model = sam_masks(frames, flow, checkpoint, json.dumps(PROMPTS))

    assert names == ["background", "box", "ball"] and model.startswith("custom ViT")
    assert labels.shape == (DEMO.num_frames, DEMO.height // 2, DEMO.width // 2)
    assert set(np.unique(labels)) <= {0, 1, 2}
    by_frame = {}
    for frame, box, points, point_labels in calls:
        by_frame.setdefault(frame, []).append((box, points, point_labels))
    # frame 0: the user's prompts, scaled to the downscaled frames
    (box0, points0, _), (ball_box, ball_points, ball_labels) = by_frame[0]
    assert np.allclose(box0, [10, 5, 22, 17]) and np.allclose(points0, [[16, 11]])
    assert ball_box is None and np.allclose(ball_points, [[25, 15], [26, 16]]) and ball_labels.tolist() == [1, 0]
    # frame 4 re-prompts the box object with the user's point
    box4, points4, _ = by_frame[4][0]
    assert box4 is None and np.allclose(points4, [[15, 10]])
    # every other frame: prompted from the previous frame's mask carried forward by the flow
    carried_prompts = 0
    for v in range(1, DEMO.num_frames):
        carried = warp_labels(labels[v - 1], flow.backward[v - 1], fill=0)
        objects = [k for k in (1, 2) if not (k == 1 and v == 4) and (carried == k).sum() >= MIN_AREA]
        expected = {k: prompt_from_mask(carried == k, 3) for k in objects}
        got = [c for c in by_frame.get(v, []) if c[0] is not None]
        assert len(got) == len(objects)
        for k, (box, points, _) in zip(objects, got):
            assert np.allclose(box, expected[k].box) and np.allclose(points, expected[k].points)
            carried_prompts += 1
    assert carried_prompts >= 4, "the random model's masks should let propagation run on most frames"


def test_without_a_checkpoint_the_command_says_what_to_download(frames_dir, tmp_path):
    config = ProcessDataConfig(data=frames_dir, output_dir=tmp_path / "scene", sam_prompts=json.dumps(PROMPTS))
    with pytest.raises(ProcessDataError) as info:
        process_video(config)
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and "sam_vit_h_4b8939.pth" in message and "--sam-checkpoint" in message
    assert not (tmp_path / "scene").exists()


def test_a_file_that_is_not_a_sam_checkpoint_is_named(tmp_path):
    path = tmp_path / "not_sam.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ProcessDataError, match="not a segment-anything checkpoint"):
        load_sam(path)
