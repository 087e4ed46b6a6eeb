"""Stage 4: per-object structure from motion with pycolmap, on each object's tracks alone.

For object k, the frames where its tracks are seen become COLMAP images; the track observations are
their keypoints, and two frames sharing tracks are matched by those tracks. pycolmap verifies the
matches geometrically (RANSAC) and runs its incremental mapper. The result, in COLMAP's conventions
(world-to-camera, OpenCV axes), is turned into the scene format's: camera_to_object =
inv(world_to_camera) @ diag(1, -1, -1, 1); pixel positions need no change (COLMAP's keypoints also put
the top-left pixel centre at (0.5, 0.5)). Each object's poses and points stay in its own SfM units.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycolmap

from osn_nerfstudio.data.scene_format import PinholeCamera
from osn_nerfstudio.process.tracks import Tracks

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class SfMConfig:
    """Per-object structure-from-motion settings (COLMAP's defaults suit large photos, not small video crops)."""

    min_frame_points: int = 12
    """A frame is given to an object's SfM only where at least this many of the object's tracks are seen."""
    min_pair_matches: int = 12
    """Two frames are matched only when they share at least this many tracks."""
    max_pair_gap: int = 12
    """Frames further apart than this are not matched (long-range matches come from drifting tracks)."""
    ransac_max_error: float = 2.0
    """RANSAC inlier threshold (pixels) of the two-view geometric verification."""
    init_min_inliers: int = 30
    """Inlier matches the mapper's initial frame pair needs."""
    init_min_tri_angle: float = 16.0
    """Triangulation angle (degrees) the initial pair needs (COLMAP's own default, which its mapper halves when no
    pair qualifies). A narrow initial pair (4) set room-c's forward-moving camera 10 degrees off."""
    abs_pose_min_inliers: int = 10
    """Inliers a frame needs to be registered against the object's 3D points."""
    max_reprojection_error: float = 3.0
    """Observations with a larger reprojection error (pixels) are dropped by the mapper."""
    min_tri_angle: float = 1.0
    """Points triangulated at a smaller angle (degrees) are dropped."""
    weight_error_scale: float = 1.0
    """Keypoint weight = 1 / (1 + (reprojection error / this)^2), in pixels."""
    seed: int = 0
    """Random seed of COLMAP's RANSAC and mapper, for reproducible scenes."""


@dataclass
class ObjectSfM:
    """One object's reconstruction over the video, in the scene format's conventions and its own units."""

    registered: np.ndarray
    """[F] bool: frames whose camera-to-object pose was recovered."""
    camera_to_object: np.ndarray
    """[F, 4, 4] camera-to-object poses (OpenGL camera axes), NaN where not registered."""
    points: np.ndarray
    """[P, 3] the object's 3D points in its own coordinates."""
    keypoint_frame: np.ndarray
    """[N] int: frame of each observation of a 3D point."""
    keypoint_uv: np.ndarray
    """[N, 2] its pixel position."""
    keypoint_depth: np.ndarray
    """[N] its z-depth in that frame's camera, own units."""
    keypoint_error: np.ndarray
    """[N] its reprojection error in pixels."""
    camera: PinholeCamera
    """The intrinsics the reconstruction ends with (refined when they were estimated)."""
    frame_failures: Dict[int, str] = field(default_factory=dict)
    """Why each frame that was not registered failed."""

    @property
    def mean_reprojection_error(self) -> float:
        return float(self.keypoint_error.mean()) if self.keypoint_error.size else float("nan")


class SfMFailure(RuntimeError):
    """An object could not be reconstructed at all; the message says why."""


def colmap_camera(camera: PinholeCamera) -> pycolmap.Camera:
    """A COLMAP PINHOLE camera with the same intrinsics (both conventions put pixel centres at +0.5)."""
    return pycolmap.Camera(
        model="PINHOLE",
        width=camera.width,
        height=camera.height,
        params=[camera.fx, camera.fy, camera.cx, camera.cy],
        has_prior_focal_length=True,
    )


def pinhole_from_colmap(camera: pycolmap.Camera) -> PinholeCamera:
    fx, fy, cx, cy = (float(p) for p in camera.params)
    return PinholeCamera(width=int(camera.width), height=int(camera.height), fx=fx, fy=fy, cx=cx, cy=cy)


def _frame_name(frame: int) -> str:
    return f"{frame:05d}"


def _matched_pairs(frame_tracks: Dict[int, np.ndarray], config: SfMConfig) -> List[Tuple[int, int, np.ndarray]]:
    """(frame a, frame b, [M, 2] keypoint rows) for every pair of frames sharing enough tracks."""
    pairs = []
    frames = sorted(frame_tracks)
    for i, a in enumerate(frames):
        for b in frames[i + 1 :]:
            if b - a > config.max_pair_gap:
                break
            shared, rows_a, rows_b = np.intersect1d(frame_tracks[a], frame_tracks[b], return_indices=True)
            if shared.size >= config.min_pair_matches:
                pairs.append((a, b, np.stack([rows_a, rows_b], axis=1).astype(np.uint32)))
    return pairs


def write_database(
    path: Path, camera: PinholeCamera, tracks: Tracks, frames: List[int], config: SfMConfig
) -> Dict[int, int]:
    """A COLMAP database with one image per frame, its tracks as keypoints and shared tracks as matches.

    Returns the image id of each frame.
    """
    frame_tracks: Dict[int, np.ndarray] = {}
    image_ids: Dict[int, int] = {}
    with pycolmap.Database.open(str(path)) as database:
        camera_id = database.write_camera(colmap_camera(camera))
        for v in frames:
            rows = np.flatnonzero(tracks.frame == v)
            order = np.argsort(tracks.track[rows])
            rows = rows[order]
            image_ids[v] = database.write_image(pycolmap.Image(name=_frame_name(v), camera_id=camera_id))
            database.write_keypoints(image_ids[v], tracks.uv[rows].astype(np.float32))
            frame_tracks[v] = tracks.track[rows]
        for a, b, matches in _matched_pairs(frame_tracks, config):
            database.write_matches(image_ids[a], image_ids[b], matches)
    return image_ids


def _pipeline_options(config: SfMConfig, refine_intrinsics: bool) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 1  # reproducible, and the machine's cores are for the caller to share
    options.random_seed = config.seed
    options.extract_colors = False
    options.min_num_matches = config.min_pair_matches
    options.min_model_size = 3
    options.ba_refine_focal_length = refine_intrinsics
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    mapper = options.mapper
    mapper.init_min_num_inliers = config.init_min_inliers
    mapper.init_min_tri_angle = config.init_min_tri_angle
    mapper.abs_pose_min_num_inliers = config.abs_pose_min_inliers
    mapper.abs_pose_refine_focal_length = refine_intrinsics
    mapper.filter_max_reproj_error = config.max_reprojection_error
    mapper.filter_min_tri_angle = config.min_tri_angle
    # tracks are already chained, so even two-frame tracks are genuine correspondences
    options.triangulation.ignore_two_view_tracks = False
    return options


def _verification_options(config: SfMConfig) -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = config.min_pair_matches
    options.ransac.max_error = config.ransac_max_error
    options.ransac.random_seed = config.seed
    options.detect_watermark = False  # static image content is the background's, not a watermark
    return options


def _observations(reconstruction: pycolmap.Reconstruction, frame_of_image: Dict[int, int]):
    """Per observation of a 3D point: frame, uv, z-depth, reprojection error; plus the points [P, 3]."""
    camera = next(iter(reconstruction.cameras.values()))
    fx, fy, cx, cy = (float(p) for p in camera.params)
    poses = {i: reconstruction.images[i].cam_from_world().matrix() for i in reconstruction.reg_image_ids()}
    frames, uvs, points, point_index = [], [], [], []
    for n, (_, point) in enumerate(reconstruction.points3D.items()):
        points.append(point.xyz)
        for element in point.track.elements:
            frames.append(element.image_id)
            uvs.append(reconstruction.images[element.image_id].points2D[element.point2D_idx].xy)
            point_index.append(n)
    points_array = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    image_ids = np.asarray(frames, dtype=np.int64)
    uv = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)
    world = points_array[np.asarray(point_index, dtype=np.int64)]
    camera_points = np.stack([poses[i][:, :3] @ x + poses[i][:, 3] for i, x in zip(image_ids, world)]).reshape(-1, 3)
    depth = camera_points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = np.stack([fx * camera_points[:, 0] / depth + cx, fy * camera_points[:, 1] / depth + cy], axis=1)
    error = np.linalg.norm(projected - uv, axis=1)
    frame = np.array([frame_of_image[i] for i in image_ids], dtype=np.int64)
    return frame, uv, depth, error, points_array


def reconstruction_to_object(
    reconstruction: pycolmap.Reconstruction, frame_of_image: Dict[int, int], num_frames: int
) -> ObjectSfM:
    """Poses, points and keypoints of a COLMAP reconstruction in the scene format's conventions."""
    registered = np.zeros(num_frames, dtype=bool)
    camera_to_object = np.full((num_frames, 4, 4), np.nan)
    for image_id in reconstruction.reg_image_ids():
        v = frame_of_image[image_id]
        world_to_camera = np.eye(4)
        world_to_camera[:3] = reconstruction.images[image_id].cam_from_world().matrix()
        camera_to_object[v] = np.linalg.inv(world_to_camera) @ OPENCV_TO_OPENGL
        registered[v] = True
    frame, uv, depth, error, points = _observations(reconstruction, frame_of_image)
    keep = (depth > 0) & np.isfinite(error)
    return ObjectSfM(
        registered=registered,
        camera_to_object=camera_to_object,
        points=points,
        keypoint_frame=frame[keep],
        keypoint_uv=uv[keep],
        keypoint_depth=depth[keep],
        keypoint_error=error[keep],
        camera=pinhole_from_colmap(next(iter(reconstruction.cameras.values()))),
    )


def reconstruct_object(
    tracks: Tracks, camera: PinholeCamera, num_frames: int, config: SfMConfig, refine_intrinsics: bool = False
) -> ObjectSfM:
    """Structure from motion on one object's tracks; raises ``SfMFailure`` when nothing can be reconstructed."""
    counts = np.bincount(tracks.frame, minlength=num_frames)
    frames = [v for v in range(num_frames) if counts[v] >= config.min_frame_points]
    failures = {
        v: (
            "no tracked points"
            if counts[v] == 0
            else f"only {counts[v]} tracked points (at least {config.min_frame_points} needed)"
        )
        for v in range(num_frames)
        if counts[v] < config.min_frame_points
    }
    if len(frames) < 2:
        raise SfMFailure(
            f"only {len(frames)} frame(s) have at least {config.min_frame_points} tracked points; SfM needs 2"
        )
    pycolmap.logging.minloglevel = 3  # COLMAP's log is not for the command's user; failures raise SfMFailure
    with tempfile.TemporaryDirectory(prefix="osn-sfm-") as work:
        work_dir = Path(work)
        database = work_dir / "database.db"
        image_ids = write_database(database, camera, tracks, frames, config)
        frame_of_image = {image_id: v for v, image_id in image_ids.items()}
        pycolmap.geometric_verification(str(database), two_view_geometry_options=_verification_options(config))
        (work_dir / "images").mkdir()
        (work_dir / "sparse").mkdir()
        models = pycolmap.incremental_mapping(
            str(database),
            str(work_dir / "images"),
            str(work_dir / "sparse"),
            _pipeline_options(config, refine_intrinsics),
        )
    if not models:
        raise SfMFailure(
            f"COLMAP's mapper found no initial pair among {len(frames)} frames (too few verified track matches, "
            "or too little camera motion relative to the object)"
        )
    ranked = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    result = reconstruction_to_object(ranked[0], frame_of_image, num_frames)
    in_other_models = {frame_of_image[i] for r in ranked[1:] for i in r.reg_image_ids()}
    for v in frames:
        if not result.registered[v]:
            failures[v] = (
                "registered only in a separate partial reconstruction that could not be joined to the main one"
                if v in in_other_models
                else "the mapper could not register it (too few verified matches with the registered frames)"
            )
    result.frame_failures = failures
    return result


@dataclass
class ObjectBox:
    """An object's SfM result moved into a frame of its own points, with the box enclosing them."""

    sfm: ObjectSfM
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    half_disagreement_deg: float = float("nan")
    """Stability of the reconstruction (``process/trust.py``: ``half_disagreement``); NaN when not measured."""
    source: str = "SfM"
    """How it was registered: "SfM", or "silhouettes" (``process/silhouettes.py``)."""
    untrusted: Optional[str] = None
    """Why the registration is not trusted (``process/trust.py``), None when it is or was not judged."""
    turn_measured: float = float("nan")
    """Silhouette registration: share of its frames whose turn from the previous frame its tracks measured."""
    turn_ambiguity_deg: float = float("nan")
    """Silhouette registration: how far apart turns are that its tracks fit about equally well (degrees)."""


def to_object_frame(sfm: ObjectSfM, margin: float = 0.1, percentile: float = 1.0) -> ObjectBox:
    """Move an object's reconstruction into a frame fitted to its points, in units of its median keypoint depth.

    The new origin is the centre of the points, the axes their principal axes (so the axis-aligned box
    of the scene format fits them snugly: the box is oriented to the points), and the unit the median
    keypoint depth (COLMAP's unit is arbitrary; this one keeps numbers near 1). The box spans the
    ``percentile``..``100 - percentile`` range of the points on each axis, grown by ``margin`` of its size
    on every side, so that a few stray points do not inflate it.
    """
    unit = float(np.median(sfm.keypoint_depth))
    points = sfm.points / unit
    low, high = np.percentile(points, [percentile, 100 - percentile], axis=0)
    inliers = points[np.all((points >= low) & (points <= high), axis=1)]
    inliers = inliers if len(inliers) >= 3 else points
    centre = inliers.mean(axis=0)
    _, _, axes = np.linalg.svd(inliers - centre)  # full_matrices: three axes even for few points
    if np.linalg.det(axes) < 0:
        axes[2] *= -1
    new_from_old = np.eye(4)
    new_from_old[:3, :3] = axes
    new_from_old[:3, 3] = -axes @ centre
    poses = sfm.camera_to_object.copy()
    poses[..., :3, 3] /= unit
    poses = new_from_old @ poses
    moved = (points - centre) @ axes.T
    low, high = np.percentile(moved, [percentile, 100 - percentile], axis=0)
    grow = margin * np.maximum(high - low, 1e-3 * max(float(np.max(high - low)), 1e-6))
    moved_sfm = ObjectSfM(
        registered=sfm.registered,
        camera_to_object=np.where(sfm.registered[:, None, None], poses, np.nan),
        points=moved,
        keypoint_frame=sfm.keypoint_frame,
        keypoint_uv=sfm.keypoint_uv,
        keypoint_depth=sfm.keypoint_depth / unit,
        keypoint_error=sfm.keypoint_error,
        camera=sfm.camera,
        frame_failures=sfm.frame_failures,
    )
    return ObjectBox(sfm=moved_sfm, bbox_min=low - grow, bbox_max=high + grow)
