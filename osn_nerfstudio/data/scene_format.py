"""The OSN scene format: in-memory representation, reader and writer.

A scene is a directory holding ``scene.json`` (everything small), ``poses.npz`` (per-object
camera-to-object poses), ``keypoints.npz`` (per-object sparse keypoints) and the image, mask and
depth files that ``scene.json`` names. ``docs/scene-format.md`` is the user-facing specification;
``validation.py`` holds every rule a scene must satisfy.

This module has no nerfstudio or torch dependency so that converters and tests can use it alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

FORMAT_NAME = "osn-scene"
FORMAT_VERSION = 1
SCENE_FILE = "scene.json"
POSES_FILE = "poses.npz"
KEYPOINTS_FILE = "keypoints.npz"
DEFAULT_IGNORE_LABEL = 255


class SceneFormatError(ValueError):
    """A scene directory cannot be read or does not satisfy the format. The message says where."""


@dataclass
class PinholeCamera:
    """Intrinsics shared by every frame of the video (undistorted pinhole, pixel centres at +0.5)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def to_json(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in ("width", "height", "fx", "fy", "cx", "cy")}

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "PinholeCamera":
        return PinholeCamera(
            width=int(data["width"]),
            height=int(data["height"]),
            fx=float(data["fx"]),
            fy=float(data["fy"]),
            cx=float(data["cx"]),
            cy=float(data["cy"]),
        )


@dataclass
class Frame:
    """One video frame: files are relative to the scene directory."""

    image: str
    """RGB image (PNG or JPEG), every frame at the camera's resolution."""
    mask: str
    """Instance label map (8- or 16-bit single-channel PNG): 0 background, k object k."""
    time: float
    """Time stamp in seconds (any monotonic unit); strictly increasing along the video."""
    depth: Optional[str] = None
    """Optional ground-truth z-depth map (``.npy`` float, H x W) in background units."""

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"image": self.image, "mask": self.mask, "time": self.time}
        if self.depth is not None:
            out["depth"] = self.depth
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "Frame":
        return Frame(image=data["image"], mask=data["mask"], time=float(data["time"]), depth=data.get("depth"))


@dataclass
class SceneObject:
    """A rigid object. Its id is its position in ``Scene.objects``; object 0 is the background."""

    name: str
    bbox_min: np.ndarray
    """Lower corner of the object's axis-aligned bounding box, in the object's own coordinates."""
    bbox_max: np.ndarray
    """Upper corner of that box."""

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "bbox_min": _floats(self.bbox_min), "bbox_max": _floats(self.bbox_max)}

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "SceneObject":
        return SceneObject(
            name=str(data["name"]),
            bbox_min=np.asarray(data["bbox_min"], dtype=np.float64),
            bbox_max=np.asarray(data["bbox_max"], dtype=np.float64),
        )


@dataclass
class Keypoints:
    """Sparse keypoints of all objects, one row per observation."""

    object_id: np.ndarray
    """[N] int: the object the keypoint belongs to."""
    frame: np.ndarray
    """[N] int: the frame it is observed in."""
    uv: np.ndarray
    """[N, 2] float: pixel position (u right, v down; the centre of the top-left pixel is (0.5, 0.5))."""
    depth: np.ndarray
    """[N] float: z-depth in the camera of that frame, in the object's own units."""
    weight: np.ndarray
    """[N] float in (0, 1]: confidence, e.g. from the reprojection error of its 3D point."""

    def __len__(self) -> int:
        return int(self.object_id.shape[0])

    def select(self, rows: np.ndarray) -> "Keypoints":
        """The keypoints at ``rows`` (a boolean mask or index array)."""
        return Keypoints(
            object_id=self.object_id[rows],
            frame=self.frame[rows],
            uv=self.uv[rows],
            depth=self.depth[rows],
            weight=self.weight[rows],
        )


@dataclass
class TestView:
    """A held-out camera for novel-view evaluation."""

    image: str
    time: float
    """Time step the view is taken at (same unit as frame times; object poses are interpolated)."""
    camera_to_background: np.ndarray
    """[4, 4] camera-to-background pose (OpenGL axes), in background units."""
    mask: Optional[str] = None
    depth: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "image": self.image,
            "time": self.time,
            "camera_to_background": np.asarray(self.camera_to_background, dtype=np.float64).tolist(),
        }
        if self.mask is not None:
            out["mask"] = self.mask
        if self.depth is not None:
            out["depth"] = self.depth
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "TestView":
        return TestView(
            image=data["image"],
            time=float(data["time"]),
            camera_to_background=np.asarray(data["camera_to_background"], dtype=np.float64),
            mask=data.get("mask"),
            depth=data.get("depth"),
        )


@dataclass
class Evaluation:
    """Optional ground truth for evaluation only; training never reads it."""

    test_views: List[TestView] = field(default_factory=list)
    relative_scales: Optional[np.ndarray] = None
    """[K] true scale of each object relative to the background (entry 0 is 1)."""

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"test_views": [v.to_json() for v in self.test_views]}
        if self.relative_scales is not None:
            out["relative_scales"] = _floats(self.relative_scales)
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "Evaluation":
        scales = data.get("relative_scales")
        return Evaluation(
            test_views=[TestView.from_json(v) for v in data.get("test_views", [])],
            relative_scales=None if scales is None else np.asarray(scales, dtype=np.float64),
        )


@dataclass
class Scene:
    """Everything a scene directory describes. File paths inside are relative to ``root``."""

    root: Path
    camera: PinholeCamera
    frames: List[Frame]
    objects: List[SceneObject]
    camera_to_object: np.ndarray
    """[K, F, 4, 4] camera-to-object pose of every object in every frame (NaN where unregistered)."""
    registered: np.ndarray
    """[K, F] bool: whether the object's pose is known in that frame."""
    keypoints: Keypoints
    mask_ignore_label: int = DEFAULT_IGNORE_LABEL
    """Mask value meaning "unknown / ignore this pixel"."""
    evaluation: Optional[Evaluation] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    """Which tool made the scene and with what settings."""

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def times(self) -> np.ndarray:
        return np.array([f.time for f in self.frames], dtype=np.float64)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def load_image(self, frame: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB of a frame."""
        return read_rgb(self.path(self.frames[frame].image))

    def load_mask(self, frame: int) -> np.ndarray:
        """[H, W] int64 instance labels of a frame."""
        return read_mask(self.path(self.frames[frame].mask))


def _floats(values: np.ndarray) -> List[float]:
    return [float(v) for v in np.asarray(values).reshape(-1)]


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB, whatever the file's mode (alpha is dropped)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise SceneFormatError(f"{path}: cannot read image ({err}).") from err


def read_mask(path: Path) -> np.ndarray:
    """[H, W] int64 labels from a single-channel 8- or 16-bit PNG."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise SceneFormatError(
                    f"{path}: mask must be a single-channel 8- or 16-bit label PNG, found mode {image.mode}."
                )
            return np.asarray(image).astype(np.int64)
    except (OSError, ValueError) as err:
        if isinstance(err, SceneFormatError):
            raise
        raise SceneFormatError(f"{path}: cannot read mask ({err}).") from err


def read_depth(path: Path) -> np.ndarray:
    """[H, W] float32 depth map from a ``.npy`` file."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as err:
        raise SceneFormatError(f"{path}: cannot read depth map ({err}).") from err


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(path)


def write_mask(path: Path, labels: np.ndarray) -> None:
    """Write labels as 8-bit PNG when they fit, 16-bit otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() > 65535:
        raise ValueError(f"{path}: mask labels must lie in [0, 65535].")
    if labels.max() <= 255:
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def write_depth(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(depth, dtype=np.float32))


def _load_json(root: Path) -> Dict[str, Any]:
    scene_file = root / SCENE_FILE
    if not root.is_dir():
        raise SceneFormatError(f"{root}: scene directory does not exist.")
    if not scene_file.is_file():
        raise SceneFormatError(f"{scene_file}: missing; a scene directory must contain {SCENE_FILE}.")
    try:
        data = json.loads(scene_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SceneFormatError(f"{scene_file}: not valid JSON ({err}).") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise SceneFormatError(f'{scene_file}: not an OSN scene (expected "format": "{FORMAT_NAME}").')
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise SceneFormatError(
            f"{scene_file}: format version {version!r} is not supported (this osn-nerfstudio reads version "
            f"{FORMAT_VERSION}); upgrade osn-nerfstudio or re-export the scene."
        )
    return data


def _load_npz(path: Path, keys: List[str]) -> Dict[str, np.ndarray]:
    if not path.is_file():
        raise SceneFormatError(f"{path}: missing.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive]
            if missing:
                raise SceneFormatError(f"{path}: missing array(s) {', '.join(missing)}.")
            return {k: archive[k] for k in keys}
    except (OSError, ValueError) as err:
        raise SceneFormatError(f"{path}: cannot read ({err}).") from err


def read_scene(root: Path | str) -> Scene:
    """Parse a scene directory without checking its content; see ``validation.load_scene``."""
    root = Path(root)
    data = _load_json(root)
    scene_file = root / SCENE_FILE
    try:
        camera = PinholeCamera.from_json(data["camera"])
        frames = [Frame.from_json(f) for f in data["frames"]]
        objects = [SceneObject.from_json(o) for o in data["objects"]]
        evaluation = Evaluation.from_json(data["evaluation"]) if data.get("evaluation") else None
    except KeyError as err:
        raise SceneFormatError(f"{scene_file}: required field {err} is missing.") from err
    except (TypeError, ValueError) as err:
        raise SceneFormatError(f"{scene_file}: malformed field ({err}).") from err
    poses = _load_npz(root / POSES_FILE, ["camera_to_object", "registered"])
    kps = _load_npz(root / KEYPOINTS_FILE, ["object_id", "frame", "uv", "depth", "weight"])
    return Scene(
        root=root,
        camera=camera,
        frames=frames,
        objects=objects,
        camera_to_object=poses["camera_to_object"].astype(np.float64),
        registered=poses["registered"].astype(bool),
        keypoints=Keypoints(
            object_id=kps["object_id"].astype(np.int64),
            frame=kps["frame"].astype(np.int64),
            uv=kps["uv"].astype(np.float64),
            depth=kps["depth"].astype(np.float64),
            weight=kps["weight"].astype(np.float64),
        ),
        mask_ignore_label=int(data.get("mask_ignore_label", DEFAULT_IGNORE_LABEL)),
        evaluation=evaluation,
        provenance=dict(data.get("provenance", {})),
    )


def scene_to_json(scene: Scene) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "camera": scene.camera.to_json(),
        "mask_ignore_label": scene.mask_ignore_label,
        "frames": [f.to_json() for f in scene.frames],
        "objects": [o.to_json() for o in scene.objects],
        "provenance": scene.provenance,
    }
    if scene.evaluation is not None:
        out["evaluation"] = scene.evaluation.to_json()
    return out


def write_scene_metadata(scene: Scene) -> None:
    """Write ``scene.json``, ``poses.npz`` and ``keypoints.npz`` into ``scene.root``.

    Images, masks and depth maps are written by the producer (``write_rgb`` and friends) at the
    relative paths the scene names.
    """
    scene.root.mkdir(parents=True, exist_ok=True)
    poses = np.where(scene.registered[..., None, None], scene.camera_to_object, np.nan)
    np.savez(scene.root / POSES_FILE, camera_to_object=poses, registered=scene.registered.astype(bool))
    kps = scene.keypoints
    np.savez(
        scene.root / KEYPOINTS_FILE,
        object_id=kps.object_id.astype(np.int32),
        frame=kps.frame.astype(np.int32),
        uv=kps.uv.astype(np.float32),
        depth=kps.depth.astype(np.float32),
        weight=kps.weight.astype(np.float32),
    )
    (scene.root / SCENE_FILE).write_text(json.dumps(scene_to_json(scene), indent=2) + "\n")


class staged_directory:
    """Build a directory next to its destination and move it into place only when complete.

    An interrupted producer leaves no half-written scene behind, and an existing directory is never
    replaced: the caller decides what to do when ``destination`` exists.
    """

    def __init__(self, destination: Path | str):
        self.destination = Path(destination)
        self.staging: Optional[Path] = None

    def __enter__(self) -> Path:
        if self.destination.exists():
            raise FileExistsError(f"{self.destination}: already exists; refusing to overwrite it.")
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=self.destination.parent))
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.staging is not None
        if exc_type is None:
            os.replace(self.staging, self.destination)
        else:
            shutil.rmtree(self.staging, ignore_errors=True)
