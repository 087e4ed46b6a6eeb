"""Multi-object dataparser: an OSN scene directory -> nerfstudio cameras plus per-object tracks.

The world frame is the background's (object 0) frame, in background units, so a frame's camera is
its background pose P_0(v). Every camera carries its (fractional) frame position in
``Cameras.metadata["frame_index"]`` and its normalised time in ``Cameras.times``; everything else the
model needs per object goes into ``DataparserOutputs.metadata["osn"]`` as an ``OSNSceneMetadata``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio.core.scale_ranges import scale_ranges, scene_bounds
from osn_nerfstudio.data.demo_scene import DemoSceneConfig
from osn_nerfstudio.data.scene_format import Scene

METADATA_KEY = "osn"
"""Key of ``OSNSceneMetadata`` in ``DataparserOutputs.metadata``."""


@dataclass
class OSNSceneMetadata:
    """Per-object data of a scene as tensors; the model turns these into buffers."""

    object_names: List[str]
    camera_to_object: Float[Tensor, "num_objects num_frames 4 4"]
    """Camera-to-object pose per object and frame (identity where ``registered`` is False)."""
    registered: Bool[Tensor, "num_objects num_frames"]
    bbox_min: Float[Tensor, "num_objects 3"]
    bbox_max: Float[Tensor, "num_objects 3"]
    frame_times: Float[Tensor, " num_frames"]
    """Normalised time of every frame, in [0, 1], as in ``Cameras.times``."""
    keypoint_object: Int[Tensor, " num_keypoints"]
    keypoint_frame: Int[Tensor, " num_keypoints"]
    keypoint_uv: Float[Tensor, "num_keypoints 2"]
    keypoint_depth: Float[Tensor, " num_keypoints"]
    """z-depth in the keypoint's object's own units."""
    keypoint_weight: Float[Tensor, " num_keypoints"]
    scale_range: Float[Tensor, "num_objects 2"]
    """[lo, hi] scale of each object relative to the background (row 0 is [1, 1])."""
    near: float
    far: float
    """Depth bounds of the scene in background units (docs/dataparser.md)."""
    focal: float = 1.0
    """Focal length of the video's camera, pixels (sizes each object's field by its pixel footprint)."""
    true_scales: Optional[Float[Tensor, " num_objects"]] = None
    """Ground-truth relative scales, when the scene has them (evaluation only)."""

    @property
    def num_objects(self) -> int:
        return len(self.object_names)

    @property
    def num_frames(self) -> int:
        return int(self.frame_times.shape[0])


@dataclass
class OSNDataParserConfig(DataParserConfig):
    """Reads an OSN scene directory (docs/scene-format.md)."""

    _target: Type = field(default_factory=lambda: OSNDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Scene directory. When omitted, the embedded demo scene is used (generated on first use)."""
    demo: DemoSceneConfig = field(default_factory=DemoSceneConfig)
    """Settings of the demo scene used when ``data`` is omitted."""
    eval_split: Literal["test-views", "frames"] = "test-views"
    """Evaluate on the scene's novel-view test cameras, or on every ``eval_frame_interval``-th video
    frame. Without test views, frames are used."""
    eval_frame_interval: int = 8
    """Stride of the video frames used for evaluation when evaluating on frames (they stay in training:
    the whole video is the input)."""
    depth_quantile: float = 0.02
    """Fraction of keypoints ignored at each end of an object's depth distribution when bounding it
    (robustness to outliers)."""
    far_margin: float = 0.1
    """The far bound lies this fraction beyond the background's farthest keypoints."""
    near_fraction: float = 0.05
    """The near bound as a fraction of the far bound."""
    check_files: bool = True
    """Read every image, mask and depth file while validating (slower on very long videos)."""


class OSNDataParser(DataParser):
    """Parses an OSN scene into nerfstudio cameras and per-object metadata."""

    config: OSNDataParserConfig
    includes_time: bool = True

    def __init__(self, config: OSNDataParserConfig):
        super().__init__(config)
        self._scene: Optional[Scene] = None

    @property
    def scene(self) -> Scene:
        if self._scene is None:
            from osn_nerfstudio.data.validation import load_scene

            self._scene = load_scene(self.scene_dir(), check_files=self.config.check_files)
        return self._scene

    def scene_dir(self) -> Path:
        if self.config.data is not None:
            return Path(self.config.data)
        from osn_nerfstudio.data.demo_scene import ensure_demo_scene

        CONSOLE.print("No --data given: using the embedded demo scene.")
        self.config.data = ensure_demo_scene(self.config.demo)
        return self.config.data

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        scene = self.scene
        metadata = build_scene_metadata(scene, self.config)
        if split == "train":
            views = frame_views(scene, range(scene.num_frames))
        else:
            views = self._eval_views(scene)
        cameras = build_cameras(scene, views)
        outputs_metadata: Dict = {
            METADATA_KEY: metadata,
            "mask_filenames": [v.mask for v in views],
            "ignore_label": scene.mask_ignore_label,
        }
        if split != "train" and all(v.depth is not None for v in views):
            outputs_metadata["depth_filenames"] = [v.depth for v in views]
        if split != "train" and all(v.covisibility is not None for v in views):
            outputs_metadata["covisibility_filenames"] = [v.covisibility for v in views]
        bbox = torch.stack([torch.from_numpy(scene.objects[0].bbox_min), torch.from_numpy(scene.objects[0].bbox_max)])
        return DataparserOutputs(
            image_filenames=[v.image for v in views],
            cameras=cameras,
            scene_box=SceneBox(aabb=bbox.float()),
            metadata=outputs_metadata,
        )

    def _eval_views(self, scene: Scene) -> List["View"]:
        test_views = scene.evaluation.test_views if scene.evaluation is not None else []
        if self.config.eval_split == "test-views" and test_views:
            return test_view_views(scene)
        if self.config.eval_split == "test-views":
            CONSOLE.print("The scene has no test views: evaluating on video frames.")
        return frame_views(scene, range(0, scene.num_frames, max(1, self.config.eval_frame_interval)))


@dataclass
class View:
    """One camera of a split: its files and where it sits in the video."""

    image: Path
    mask: Optional[Path]
    depth: Optional[Path]
    camera_to_world: np.ndarray
    time: float
    """Time in the scene's own unit (seconds)."""
    covisibility: Optional[Path] = None
    """Mask of the pixels a training frame also shows (test views of generated scenes)."""


def frame_views(scene: Scene, frames) -> List[View]:
    return [
        View(
            image=scene.path(scene.frames[v].image),
            mask=scene.path(scene.frames[v].mask),
            depth=scene.path(scene.frames[v].depth) if scene.frames[v].depth else None,
            camera_to_world=scene.camera_to_object[0, v],
            time=scene.frames[v].time,
        )
        for v in frames
    ]


def test_view_views(scene: Scene) -> List[View]:
    assert scene.evaluation is not None
    return [
        View(
            image=scene.path(t.image),
            mask=scene.path(t.mask) if t.mask else None,
            depth=scene.path(t.depth) if t.depth else None,
            camera_to_world=t.camera_to_background,
            time=t.time,
            covisibility=scene.path(t.covisibility) if t.covisibility else None,
        )
        for t in scene.evaluation.test_views
    ]


def normalise_times(scene: Scene, times: np.ndarray) -> np.ndarray:
    """Times in the scene's unit mapped so that the video spans [0, 1] (all zero for a single frame)."""
    first, last = scene.times[0], scene.times[-1]
    return (times - first) / (last - first) if last > first else np.zeros_like(times)


def build_cameras(scene: Scene, views: List[View]) -> Cameras:
    """nerfstudio cameras of ``views`` with normalised time and fractional frame index."""
    cam = scene.camera
    view_times = np.array([v.time for v in views], dtype=np.float64)
    times = normalise_times(scene, view_times)
    frame_index = np.interp(view_times, scene.times, np.arange(scene.num_frames, dtype=np.float64))
    poses = torch.from_numpy(np.stack([v.camera_to_world[:3, :4] for v in views])).float()
    n = len(views)
    return Cameras(
        camera_to_worlds=poses,
        fx=torch.full((n, 1), cam.fx),
        fy=torch.full((n, 1), cam.fy),
        cx=torch.full((n, 1), cam.cx),
        cy=torch.full((n, 1), cam.cy),
        width=torch.full((n, 1), cam.width, dtype=torch.long),
        height=torch.full((n, 1), cam.height, dtype=torch.long),
        camera_type=CameraType.PERSPECTIVE,
        times=torch.from_numpy(times).float(),
        metadata={"frame_index": torch.from_numpy(frame_index).float()[:, None]},
    )


def build_scene_metadata(scene: Scene, config: OSNDataParserConfig) -> OSNSceneMetadata:
    kp = scene.keypoints
    keypoint_object = torch.from_numpy(kp.object_id).long()
    keypoint_depth = torch.from_numpy(kp.depth).double()
    background = keypoint_depth[keypoint_object == 0]
    bounds = scene_bounds(background, config.depth_quantile, config.far_margin, config.near_fraction)
    ranges = scale_ranges(keypoint_object, keypoint_depth, scene.num_objects, bounds, config.depth_quantile)
    poses = np.where(scene.registered[..., None, None], scene.camera_to_object, np.eye(4))
    true_scales = None
    if scene.evaluation is not None and scene.evaluation.relative_scales is not None:
        true_scales = torch.from_numpy(scene.evaluation.relative_scales).float()
    return OSNSceneMetadata(
        object_names=[o.name for o in scene.objects],
        camera_to_object=torch.from_numpy(poses).float(),
        registered=torch.from_numpy(scene.registered),
        bbox_min=torch.from_numpy(np.stack([o.bbox_min for o in scene.objects])).float(),
        bbox_max=torch.from_numpy(np.stack([o.bbox_max for o in scene.objects])).float(),
        frame_times=torch.from_numpy(normalise_times(scene, scene.times)).float(),
        keypoint_object=keypoint_object,
        keypoint_frame=torch.from_numpy(kp.frame).long(),
        keypoint_uv=torch.from_numpy(kp.uv).float(),
        keypoint_depth=keypoint_depth.float(),
        keypoint_weight=torch.from_numpy(kp.weight).float(),
        scale_range=ranges.float(),
        near=bounds.near,
        far=bounds.far,
        focal=float(np.sqrt(scene.camera.fx * scene.camera.fy)),
        true_scales=true_scales,
    )
