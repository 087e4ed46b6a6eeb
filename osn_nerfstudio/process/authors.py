"""Import the OSN authors' processed datasets (github.com/vLAR-group/OSN, data_prepare/) as OSN scenes.

Their layout, per scene directory (facts from their data preparation, documented in
docs/scene-format.md, "Importing the authors' processed datasets"):

    transforms_train.json       img_h, img_w, focal (principal point at the image centre), frames[].time
    images_train/*.png          the training frames, in name order
    segm_sam/*.npy              per-frame instance label maps (0 background, k object k)
    <preproc>/poses/pose{k}.npy [F, 4, 4] camera-to-object poses of object k (OpenGL axes, own units)
    <preproc>/poses/vis{k}.npy  [F] 1 where object k was registered
    <preproc>/poses/bbox{k}.npy [3, 2] object k's box, rows x, y, z as (min, max)
    <preproc>/depth/depth{k}.npy [N, 5] keypoints: u, v, z-depth (own units), reprojection error, weight in (0, 2]
    <preproc>/depth/vid{k}.npy  [N] the frame of each keypoint

These are already the scene format's conventions (their poses come from COLMAP with the same axis flip,
their pixel positions from COLMAP too), so the import only re-packs and checks them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from osn_nerfstudio.data.scene_format import Frame, Keypoints, PinholeCamera, Scene, SceneObject
from osn_nerfstudio.process.common import CONSOLE, ProcessDataError
from osn_nerfstudio.process.frames import Frames, FrameSamplingConfig, read_frame_folder
from osn_nerfstudio.process.masks import BACKGROUND_NAME, mask_files, read_label_maps
from osn_nerfstudio.process.pipeline import TOOL_NAME, ObjectReport, ProcessReport, print_summary, publish, write_scene


@dataclass
class ImportAuthors:
    """The OSN authors' processed dataset (their poses/, depth/ arrays and segm_sam masks) -> an OSN scene."""

    data: Path
    """Their scene directory (holding transforms_train.json, images_train/, segm_sam/ and the preprocessing folder)."""
    output_dir: Path
    """Scene directory to create."""
    overwrite: bool = False
    """Replace ``output_dir`` if it exists (only once the new scene is complete and valid)."""
    preproc_path: str = "sam_raft"
    """Their preprocessing folder inside ``data`` (the ``preproc_path`` of their config files)."""
    masks_dir: str = "segm_sam"
    """Folder of per-frame label maps inside ``data``."""
    object_names: Optional[List[str]] = None
    """Names of objects 1, 2, ... (default object-1, ...)."""
    ignore_label: int = 255
    """Label of unknown pixels in their masks, if any."""
    preview: bool = True
    """Write preview.png (masks and keypoints per object) into the scene."""

    def main(self) -> None:
        print_summary(import_authors_dataset(self))


def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise ProcessDataError(f"{path}: missing ({what}); is --preproc-path right?")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ProcessDataError(f"{path}: cannot read ({err}).") from err


def _meta(root: Path) -> dict:
    path = root / "transforms_train.json"
    try:
        meta = json.loads(path.read_text())
        float(meta["img_w"]), float(meta["img_h"]), float(meta["focal"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProcessDataError(f"{path}: cannot read img_w, img_h and focal from it ({err}).") from err
    return meta


def _times(meta: dict, num_frames: int, root: Path) -> np.ndarray:
    frames = meta.get("frames") or []
    times = [f.get("time") for f in frames] if len(frames) == num_frames else []
    if not times or any(not isinstance(t, (int, float)) for t in times) or np.any(np.diff(times) <= 0):
        CONSOLE.print(f"[yellow]{root}/transforms_train.json: no increasing frame times; using frame indices.[/yellow]")
        return np.arange(num_frames, dtype=np.float64)
    return np.asarray(times, dtype=np.float64)


def _object(root: Path, k: int, num_frames: int, camera: PinholeCamera):
    """Object k's poses, registration, box and keypoints; checked against the frame count."""
    poses_dir, depth_dir = root / "poses", root / "depth"
    poses = _load(poses_dir / f"pose{k}.npy", "camera-to-object poses").astype(np.float64)
    visible = _load(poses_dir / f"vis{k}.npy", "visibility").astype(bool).reshape(-1)
    box = _load(poses_dir / f"bbox{k}.npy", "bounding box").astype(np.float64)
    table = _load(depth_dir / f"depth{k}.npy", "keypoints").astype(np.float64)
    frame = _load(depth_dir / f"vid{k}.npy", "keypoint frames").astype(np.int64).reshape(-1)
    if poses.shape != (num_frames, 4, 4) or visible.shape != (num_frames,):
        raise ProcessDataError(
            f"{poses_dir}: pose{k}.npy {list(poses.shape)} and vis{k}.npy {list(visible.shape)} do not fit the "
            f"{num_frames} frames of images_train/ (expected [{num_frames}, 4, 4] and [{num_frames}])."
        )
    if box.shape != (3, 2) or table.ndim != 2 or table.shape[1] < 5 or frame.shape != (table.shape[0],):
        raise ProcessDataError(
            f"{root}: object {k}: bbox{k}.npy {list(box.shape)}, depth{k}.npy {list(table.shape)}, vid{k}.npy "
            f"{list(frame.shape)}; expected [3, 2], [N, 5] and [N]."
        )
    u, v, depth, weight = table[:, 0], table[:, 1], table[:, 2], table[:, 4] / 2.0  # their weights lie in (0, 2]
    usable = (
        (frame >= 0) & (frame < num_frames) & (u >= 0) & (v >= 0) & (u <= camera.width) & (v <= camera.height)
        & (depth > 0) & (weight > 0)
    )
    usable[usable] &= visible[frame[usable]]
    keypoints = Keypoints(
        object_id=np.full(int(usable.sum()), k),
        frame=frame[usable],
        uv=table[usable, :2],
        depth=depth[usable],
        weight=np.minimum(weight[usable], 1.0),
    )
    poses[~visible] = np.nan
    return poses, visible, box, keypoints, float(table[usable, 3].mean()) if usable.any() else float("nan")


def import_authors_dataset(config: ImportAuthors) -> ProcessReport:
    """Write the authors' processed scene at ``config.data`` as an OSN scene at ``config.output_dir``."""
    root = Path(config.data)
    if not root.is_dir():
        raise ProcessDataError(f"{root}: not a directory; pass the authors' scene directory with --data.")
    report = ProcessReport(mask_source=f"{root / config.masks_dir}", camera_source="from transforms_train.json")
    start = time.perf_counter()
    meta = _meta(root)
    width, height, focal = int(round(float(meta["img_w"]))), int(round(float(meta["img_h"]))), float(meta["focal"])
    camera = PinholeCamera(width=width, height=height, fx=focal, fy=focal, cx=width / 2, cy=height / 2)
    frames: Frames = read_frame_folder(root / "images_train", FrameSamplingConfig())
    if frames.size != (width, height):
        raise ProcessDataError(
            f"{root}/images_train: frames are {frames.size[0]}x{frames.size[1]}, "
            f"transforms_train.json says {width}x{height}."
        )
    frames.times = _times(meta, frames.num_frames, root)
    preproc = root / config.preproc_path
    num_objects = 0
    while (preproc / "poses" / f"pose{num_objects}.npy").is_file():
        num_objects += 1
    if num_objects == 0:
        raise ProcessDataError(f"{preproc}/poses: no pose0.npy; is --preproc-path right (their config's preproc_path)?")
    names = [BACKGROUND_NAME, *(config.object_names or [f"object-{k}" for k in range(1, num_objects)])]
    if len(names) != num_objects:
        raise ProcessDataError(
            f"{preproc}/poses holds {num_objects} objects but --object-names gives {len(names) - 1} name(s)."
        )
    masks_dir = root / config.masks_dir
    if not (masks_dir.is_dir() and mask_files(masks_dir)):
        raise ProcessDataError(f"{masks_dir}: no masks (.npy or .png label maps); is --masks-dir right?")
    labels, _ = read_label_maps(masks_dir, frames, names[1:], config.ignore_label)
    parts = [_object(preproc, k, frames.num_frames, camera) for k in range(num_objects)]
    unregistered = np.flatnonzero(~parts[0][1])
    if unregistered.size:
        raise ProcessDataError(
            f"{preproc}/poses/vis0.npy: the background is not registered in frames {unregistered.tolist()[:10]}."
        )
    report.stage_seconds["read"] = time.perf_counter() - start
    scene = Scene(
        root=Path(),
        camera=camera,
        frames=[
            Frame(image=f"images/{v:05d}.png", mask=f"masks/{v:05d}.png", time=float(t))
            for v, t in enumerate(frames.times)
        ],
        objects=[SceneObject(name, part[2][:, 0], part[2][:, 1]) for name, part in zip(names, parts)],
        camera_to_object=np.stack([p[0] for p in parts]),
        registered=np.stack([p[1] for p in parts]),
        keypoints=Keypoints(
            *(
                np.concatenate([getattr(p[3], f) for p in parts])
                for f in ("object_id", "frame", "uv", "depth", "weight")
            )
        ),
        mask_ignore_label=config.ignore_label,
        provenance={
            "tool": TOOL_NAME,
            "imported_from": str(root),
            "format": "OSN authors' processed data",
            "preproc_path": config.preproc_path,
        },
    )
    report.objects = [
        ObjectReport(
            name,
            int(part[1].sum()),
            int((scene.keypoints.object_id == k).sum()),
            part[4],
            visible_frames=int((labels == k).any(axis=(1, 2)).sum()),
        )
        for k, (name, part) in enumerate(zip(names, parts))
    ]

    def build(staging: Path) -> None:
        scene.root = staging
        write_scene(scene, frames, labels, config.preview)

    start = time.perf_counter()
    publish(Path(config.output_dir), config.overwrite, build)
    report.stage_seconds["write"] = time.perf_counter() - start
    scene.root = Path(config.output_dir)
    report.scene = scene
    return report
