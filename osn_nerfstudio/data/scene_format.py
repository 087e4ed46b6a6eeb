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
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

import numpy as np
from PIL import Image

FORMAT_NAME = "osn-scene"
FORMAT_VERSION = 1
SCENE_FILE = "scene.json"
POSES_FILE = "poses.npz"
KEYPOINTS_FILE = "keypoints.npz"
DEFAULT_IGNORE_LABEL = 255
MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
"""Pillow modes of single-channel 8- or 16-bit label images (``I``: how some readers open 16-bit PNGs)."""

IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What Pillow raises for a broken image file (SyntaxError: some plugins' "broken PNG file")."""

T = TypeVar("T")


class SceneFormatError(ValueError):
    """A scene directory cannot be read or does not satisfy the format. The message says where."""


class _FieldError(ValueError):
    """A malformed ``scene.json`` field: ``where`` is its location (``frames[2]``), ``problem`` what is wrong."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


def _parse_at(where: str, parse: Callable[[Any], T], value: Any) -> T:
    """``parse(value)``, turning any failure into a ``_FieldError`` located at ``where``."""
    try:
        return parse(value)
    except _FieldError as err:
        raise _FieldError(".".join(p for p in (where, err.where) if p), err.problem) from err
    except KeyError as err:
        raise _FieldError(where, f"required field '{err.args[0]}' is missing") from err
    except (TypeError, ValueError) as err:
        raise _FieldError(where, str(err)) from err


def _mapping(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, found {value!r}")
    return value


def _list(data: Dict[str, Any], key: str) -> List[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise TypeError(f"field '{key}' must be a list, found {value!r}")
    return value


def _number(data: Dict[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"field '{key}' must be a number, found {value!r}")
    return float(value)


def _integer(data: Dict[str, Any], key: str) -> int:
    value = _number(data, key)
    if not value.is_integer():
        raise TypeError(f"field '{key}' must be an integer, found {data[key]!r}")
    return int(value)


def _string(data: Dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"field '{key}' must be a non-empty string, found {value!r}")
    return value


def _vector(data: Dict[str, Any], key: str) -> np.ndarray:
    value = data[key]
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise TypeError(f"field '{key}' must be a list of numbers, found {value!r}")
    return np.asarray(value, dtype=np.float64)


def _matrix(data: Dict[str, Any], key: str) -> np.ndarray:
    value = data[key]
    rows = value if isinstance(value, list) else [None]
    if not rows or any(not isinstance(r, list) or len(r) != len(rows[0]) for r in rows):
        raise TypeError(f"field '{key}' must be a nested list of rows of equal length, found {value!r}")
    return np.stack([_vector({key: r}, key) for r in rows])


def _optional_string(data: Dict[str, Any], key: str) -> Optional[str]:
    return None if data.get(key) is None else _string(data, key)


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
        sizes = {"width": int(self.width), "height": int(self.height)}
        return {**sizes, **{k: float(getattr(self, k)) for k in ("fx", "fy", "cx", "cy")}}

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "PinholeCamera":
        data = _mapping(data)
        return PinholeCamera(
            width=_integer(data, "width"),
            height=_integer(data, "height"),
            fx=_number(data, "fx"),
            fy=_number(data, "fy"),
            cx=_number(data, "cx"),
            cy=_number(data, "cy"),
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
        out: Dict[str, Any] = {"image": self.image, "mask": self.mask, "time": float(self.time)}
        if self.depth is not None:
            out["depth"] = self.depth
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "Frame":
        data = _mapping(data)
        return Frame(
            image=_string(data, "image"),
            mask=_string(data, "mask"),
            time=_number(data, "time"),
            depth=_optional_string(data, "depth"),
        )


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
        data = _mapping(data)
        return SceneObject(
            name=_string(data, "name"), bbox_min=_vector(data, "bbox_min"), bbox_max=_vector(data, "bbox_max")
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

    __test__ = False  # not a pytest test class, despite the name

    image: str
    time: float
    """Time step the view is taken at (same unit as frame times; object poses are interpolated)."""
    camera_to_background: np.ndarray
    """[4, 4] camera-to-background pose (OpenGL axes), in background units."""
    mask: Optional[str] = None
    depth: Optional[str] = None
    covisibility: Optional[str] = None
    """Mask of the pixels whose surface some training frame shows (nonzero); evaluation scores only those."""

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "image": self.image,
            "time": float(self.time),
            "camera_to_background": np.asarray(self.camera_to_background, dtype=np.float64).tolist(),
        }
        if self.mask is not None:
            out["mask"] = self.mask
        if self.depth is not None:
            out["depth"] = self.depth
        if self.covisibility is not None:
            out["covisibility"] = self.covisibility
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "TestView":
        data = _mapping(data)
        return TestView(
            image=_string(data, "image"),
            time=_number(data, "time"),
            camera_to_background=_matrix(data, "camera_to_background"),
            mask=_optional_string(data, "mask"),
            depth=_optional_string(data, "depth"),
            covisibility=_optional_string(data, "covisibility"),
        )


@dataclass
class Evaluation:
    """Optional ground truth for evaluation only; training never reads it."""

    test_views: List[TestView] = field(default_factory=list)
    relative_scales: Optional[np.ndarray] = None
    """[K] true scale of each object relative to the background (entry 0 is 1)."""
    amodal_depth: Optional[str] = None
    """Relative path of a ``.npy`` [K, F, H, W] float32 array: the z-depth (background units) of each object alone at
    its true scale in every frame, inf where it does not cover the pixel. What only a generator knows: with it the
    scene's exact valid set can be computed."""

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"test_views": [v.to_json() for v in self.test_views]}
        if self.relative_scales is not None:
            out["relative_scales"] = _floats(self.relative_scales)
        if self.amodal_depth is not None:
            out["amodal_depth"] = self.amodal_depth
        return out

    @staticmethod
    def from_json(data: Dict[str, Any]) -> "Evaluation":
        data = _mapping(data)
        views = _list(data, "test_views") if "test_views" in data else []
        return Evaluation(
            test_views=[_parse_at(f"test_views[{i}]", TestView.from_json, v) for i, v in enumerate(views)],
            relative_scales=None if data.get("relative_scales") is None else _vector(data, "relative_scales"),
            amodal_depth=_optional_string(data, "amodal_depth"),
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
    except IMAGE_READ_ERRORS as err:
        raise SceneFormatError(f"{path}: cannot read image ({err}).") from err


def read_mask(path: Path) -> np.ndarray:
    """[H, W] int64 labels from a single-channel 8- or 16-bit PNG."""
    try:
        with Image.open(path) as image:
            mode, channels = image.mode, len(image.getbands())
            labels = np.asarray(image) if mode in MASK_MODES else None
    except IMAGE_READ_ERRORS as err:
        raise SceneFormatError(f"{path}: cannot read mask ({err}).") from err
    if labels is None:
        raise SceneFormatError(
            f"{path}: mask must be a single-channel 8- or 16-bit label map of object ids, found mode {mode} "
            f"({channels} channel(s)); write object ids with write_mask."
        )
    return labels.astype(np.int64)


def read_depth(path: Path) -> np.ndarray:
    """[H, W] float32 depth map from a ``.npy`` file."""
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SceneFormatError(f"{path}: cannot read depth map ({err}).") from err
    if isinstance(depth, np.lib.npyio.NpzFile):
        depth.close()
        raise SceneFormatError(f"{path}: a depth map must be one .npy array (np.save), not an .npz archive.")
    if depth.dtype.kind not in "fiu":
        raise SceneFormatError(f"{path}: depth map has dtype {depth.dtype}, expected floats.")
    return depth.astype(np.float32)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write [H, W, 3] colours in 0..255 (uint8, or floats that are rounded); the suffix picks PNG or JPEG."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: an RGB image must have shape [H, W, 3], found {list(rgb.shape)}.")
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError(f"{path}: RGB values must lie in 0..255 (scale [0, 1] colours by 255 first).")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgb).astype(np.uint8)).save(path)


def write_mask(path: Path, labels: np.ndarray) -> None:
    """Write [H, W] labels as 8-bit PNG when they fit, 16-bit otherwise."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a mask must have shape [H, W], found {list(labels.shape)}.")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"{path}: mask labels must lie in [0, 65535].")
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.size == 0 or labels.max() <= 255:
        Image.fromarray(labels.astype(np.uint8)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def read_amodal_depth(path: Path) -> np.ndarray:
    """[K, F, H, W] float32 amodal depth of every object in every frame, memory-mapped from its ``.npy`` file."""
    try:
        depth = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SceneFormatError(f"{path}: cannot read the amodal depth ({err}).") from err
    if depth.ndim != 4 or depth.dtype != np.float32:
        raise SceneFormatError(
            f"{path}: amodal depth must be a [K, F, H, W] float32 array, found {list(depth.shape)} {depth.dtype}."
        )
    return depth


def write_amodal_depth(path: Path, depth: np.ndarray) -> None:
    """Write [K, F, H, W] amodal z-depth (inf where an object does not cover a pixel) as float32 ``.npy``."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 4:
        raise ValueError(f"{path}: amodal depth must have shape [K, F, H, W], found {list(depth.shape)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, depth)


def write_depth(path: Path, depth: np.ndarray) -> None:
    """Write an [H, W] z-depth map as float32 ``.npy`` (0 or inf where there is no depth)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"{path}: a depth map must have shape [H, W], found {list(depth.shape)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, depth)


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
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SceneFormatError(
            f'{scene_file}: not an OSN scene (expected "format": "{FORMAT_NAME}", found {found!r}).'
        )
    version = data.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise SceneFormatError(
            f"{scene_file}: format version {version!r} is not supported (this osn-nerfstudio reads version "
            f"{FORMAT_VERSION}); upgrade osn-nerfstudio or re-export the scene."
        )
    return data


_KIND_NAMES = {"iu": "integers", "fiu": "numbers", "biu": "booleans (or 0/1 integers)"}


def _load_npz(path: Path, kinds: Dict[str, str]) -> Dict[str, np.ndarray]:
    """The arrays ``kinds`` names from an ``.npz``; each kind lists the accepted numpy dtype kinds ("fiu")."""
    if not path.is_file():
        raise SceneFormatError(f"{path}: missing; it must hold the arrays {', '.join(kinds)}.")
    if not zipfile.is_zipfile(path):
        raise SceneFormatError(f"{path}: not an .npz archive (a zip of .npy arrays); write it with np.savez.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SceneFormatError(f"{path}: cannot read ({err}); write it with np.savez.") from err
    with archive:
        missing = [k for k in kinds if k not in archive]
        if missing:
            raise SceneFormatError(f"{path}: missing array(s) {', '.join(missing)}.")
        try:
            arrays = {k: archive[k] for k in kinds}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise SceneFormatError(f"{path}: cannot read ({err}).") from err
    for key, kind in kinds.items():
        if arrays[key].dtype.kind not in kind:
            raise SceneFormatError(f"{path}: array {key} has dtype {arrays[key].dtype}, expected {_KIND_NAMES[kind]}.")
    return arrays


def _scene_fields(data: Dict[str, Any]) -> Dict[str, Any]:
    evaluation = data.get("evaluation")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise TypeError(f"field 'provenance' must be a JSON object, found {provenance!r}")
    return dict(
        camera=_parse_at("camera", PinholeCamera.from_json, data["camera"]),
        frames=[_parse_at(f"frames[{i}]", Frame.from_json, f) for i, f in enumerate(_list(data, "frames"))],
        objects=[_parse_at(f"objects[{i}]", SceneObject.from_json, o) for i, o in enumerate(_list(data, "objects"))],
        mask_ignore_label=_integer(data, "mask_ignore_label") if "mask_ignore_label" in data else DEFAULT_IGNORE_LABEL,
        evaluation=None if evaluation is None else _parse_at("evaluation", Evaluation.from_json, evaluation),
        provenance=provenance,
    )


def read_scene(root: Path | str) -> Scene:
    """Parse a scene directory without checking its content; see ``validation.load_scene``."""
    root = Path(root)
    data = _load_json(root)
    try:
        fields = _parse_at("", _scene_fields, data)
    except _FieldError as err:
        raise SceneFormatError(f"{root / SCENE_FILE}: {err}.") from err
    poses = _load_npz(root / POSES_FILE, {"camera_to_object": "fiu", "registered": "biu"})
    kps = _load_npz(
        root / KEYPOINTS_FILE, {"object_id": "iu", "frame": "iu", "uv": "fiu", "depth": "fiu", "weight": "fiu"}
    )
    return Scene(
        root=root,
        camera_to_object=poses["camera_to_object"].astype(np.float64),
        registered=poses["registered"].astype(bool),
        keypoints=Keypoints(
            object_id=kps["object_id"].astype(np.int64),
            frame=kps["frame"].astype(np.int64),
            uv=kps["uv"].astype(np.float64),
            depth=kps["depth"].astype(np.float64),
            weight=kps["weight"].astype(np.float64),
        ),
        **fields,
    )


def scene_to_json(scene: Scene) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "camera": scene.camera.to_json(),
        "mask_ignore_label": int(scene.mask_ignore_label),
        "frames": [f.to_json() for f in scene.frames],
        "objects": [o.to_json() for o in scene.objects],
        "provenance": scene.provenance,
    }
    if scene.evaluation is not None:
        out["evaluation"] = scene.evaluation.to_json()
    return out


def _write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Like ``np.savez``, but byte-for-byte reproducible: members carry a fixed time stamp."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def write_scene_metadata(scene: Scene) -> None:
    """Write ``scene.json``, ``poses.npz`` and ``keypoints.npz`` into ``scene.root``.

    Images, masks and depth maps are written by the producer (``write_rgb`` and friends) at the
    relative paths the scene names. The same scene always gives the same bytes.
    """
    scene.root.mkdir(parents=True, exist_ok=True)
    registered = np.asarray(scene.registered, dtype=bool)
    poses = np.where(registered[..., None, None], np.asarray(scene.camera_to_object, dtype=np.float64), np.nan)
    _write_npz(scene.root / POSES_FILE, {"camera_to_object": poses, "registered": registered})
    kps = scene.keypoints
    _write_npz(
        scene.root / KEYPOINTS_FILE,
        {
            "object_id": np.asarray(kps.object_id).astype(np.int32),
            "frame": np.asarray(kps.frame).astype(np.int32),
            "uv": np.asarray(kps.uv).astype(np.float32),
            "depth": np.asarray(kps.depth).astype(np.float32),
            "weight": np.asarray(kps.weight).astype(np.float32),
        },
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
        # mkdir (not tempfile.mkdtemp) so the finished directory gets the user's usual permissions, not 0700.
        self.staging = self.destination.parent / f".{self.destination.name}.staging-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir()
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.staging is not None
        try:
            if exc_type is not None:
                return
            if self.destination.exists():
                raise FileExistsError(
                    f"{self.destination}: appeared while it was being built; refusing to overwrite it."
                )
            os.replace(self.staging, self.destination)
        finally:
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
