"""Inputs for osn-process-data tests, made from generated demo scenes: what a user would have, nothing more.

Not named ``test_*`` so pytest does not collect it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

from osn_nerfstudio.data.scene_format import Scene


def export_frames_and_masks(scene: Scene, destination: Path) -> Tuple[Path, Path]:
    """Copy the scene's video frames and label maps (no test views, poses, keypoints or depth) into
    ``destination/frames`` and ``destination/masks``."""
    frames, masks = destination / "frames", destination / "masks"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for v, frame in enumerate(scene.frames):
        shutil.copy(scene.path(frame.image), frames / f"{v:05d}.png")
        shutil.copy(scene.path(frame.mask), masks / f"{v:05d}.png")
    return frames, masks


def write_video(scene: Scene, path: Path, fps: float) -> Path:
    """The scene's frames as a lossless-enough MJPG AVI file that OpenCV can read back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (scene.camera.width, scene.camera.height))
    assert writer.isOpened()
    for v in range(scene.num_frames):
        writer.write(cv2.cvtColor(scene.load_image(v), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_authors_dataset(scene: Scene, destination: Path, preproc: str = "sam_raft") -> Path:
    """The scene in the OSN authors' processed layout (images_train/, segm_sam/, <preproc>/poses, depth)."""
    (destination / "images_train").mkdir(parents=True)
    (destination / "segm_sam").mkdir()
    poses_dir, depth_dir = destination / preproc / "poses", destination / preproc / "depth"
    poses_dir.mkdir(parents=True)
    depth_dir.mkdir()
    for v in range(scene.num_frames):
        shutil.copy(scene.path(scene.frames[v].image), destination / "images_train" / f"{v:04d}.png")
        np.save(destination / "segm_sam" / f"{v:04d}.npy", scene.load_mask(v).astype(np.int32))
    camera = scene.camera
    meta = {
        "img_h": camera.height,
        "img_w": camera.width,
        "focal": camera.fx,
        "frames": [
            {"time": v / (scene.num_frames - 1), "transform_matrix": scene.camera_to_object[0, v].tolist()}
            for v in range(scene.num_frames)
        ],
    }
    (destination / "transforms_train.json").write_text(json.dumps(meta))
    kp = scene.keypoints
    for k, obj in enumerate(scene.objects):
        poses = np.where(scene.registered[k][:, None, None], scene.camera_to_object[k], np.eye(4))
        np.save(poses_dir / f"pose{k}.npy", poses.astype(np.float32))
        np.save(poses_dir / f"vis{k}.npy", scene.registered[k].astype(np.int32))
        np.save(poses_dir / f"bbox{k}.npy", np.stack([obj.bbox_min, obj.bbox_max], axis=1).astype(np.float32))
        rows = kp.object_id == k
        error = np.full(int(rows.sum()), 0.5)
        table = np.column_stack([kp.uv[rows], kp.depth[rows], error, 2.0 * kp.weight[rows]])
        np.save(depth_dir / f"depth{k}.npy", table.astype(np.float32))
        np.save(depth_dir / f"vid{k}.npy", kp.frame[rows].astype(np.int32))
    return destination
