"""Stage 4b (opt-in): registration of a foreground object from its mask outlines and short tracks, where SfM cannot.

An object 20-30 pixels across, or one without texture, gives structure from motion too few long tracks: the
mapper finds no initial pair, or a reconstruction whose rotations are noise. Its masks still say where it is
and how large it looks in every frame, and the background's SfM says how the camera turns. Here:

* Centre. The object's centre is seen at its mask's centroid, at a z-depth inversely proportional to the mask's
  size (weak perspective): z = f / rho with rho = sqrt(area / pi), in the object's own unit, its radius. Only
  frames where the whole outline is seen count (the mask does not touch the image border, another object or
  unknown pixels, and is not suddenly smaller than in nearby frames, as when furniture hides part of it); every
  visible frame takes its centre from a local linear fit over the nearest such frames, in world axes.
* Turn. A constant angular velocity whose triangulated track points reproject best is the start; a bundle
  adjustment then refines the turns (angular velocity softly constant), the centres (softly at their silhouette
  measurement) and the points (softly on the unit sphere).

The result is an ``ObjectSfM`` in the object's own unit, so the rest of the stage treats it like an SfM
reconstruction. Its turn is not verified: on the benchmark scenes the tracks of small objects fit wrong turns better
than the true ones (docs/process-data.md), so ``process/trust.py`` never trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix
from scipy.spatial.transform import Rotation

from osn_nerfstudio.data.scene_format import PinholeCamera
from osn_nerfstudio.process.evaluation import rotation_angle_deg
from osn_nerfstudio.process.sfm import OPENCV_TO_OPENGL, ObjectBox, ObjectSfM, SfMFailure
from osn_nerfstudio.process.tracks import Tracks


@dataclass
class SilhouetteConfig:
    """Registration from mask outlines, for foreground objects whose SfM fails or is not trusted."""

    enabled: bool = False
    """Where SfM fails or is untrusted, register the object from its silhouettes and keep it, flagged: its centre is
    measured, its turn unverified (on the benchmark scenes 2-90 degrees off; docs/process-data.md)."""
    prefer: bool = False
    """Register every foreground object from its silhouettes, even where its SfM is trusted (implies enabled)."""
    min_whole_frames: int = 3
    """Frames with the whole outline in view the object needs."""
    shrink_tolerance: float = 0.08
    """A mask more than this fraction smaller (in radius) than the median of nearby frames is taken as partly hidden."""
    centre_neighbours: int = 3
    """Whole-outline frames in each frame's local linear fit of the centre (2: plain interpolation)."""
    min_shared_tracks: int = 3
    """Tracks two consecutive frames must share for the rotation between them to be measured."""
    centre_pixels: float = 1.0
    """How far (pixels, across the view) the adjustment may move a centre from its silhouette measurement, as a std."""
    depth_tolerance: float = 0.05
    """How far it may move a centre's depth, as a std relative to the depth the mask's size gives."""
    sphere_prior: float = 0.05
    """Weight of the points' pull onto the unit sphere, in pixels per mask radius of distance."""
    smoothness: float = 0.2
    """Weight of a change of angular velocity between frames, in pixels per mask radius per radian."""
    ambiguity_margin: float = 0.05
    """Steady turns whose robust reprojection cost is within this fraction of the best count as rivals (ambiguity)."""
    max_evaluations: int = 60
    """Residual evaluations of each bundle adjustment (it runs twice, the second time without outliers)."""
    box_extent: float = 1.3
    """The object's box: a cube about the centre, its half-size this times the largest whole outline's half-extent
    (in mask radii); track points outside it are not on the object and are dropped."""
    max_reprojection_error: float = 3.0
    """Observations with a larger error (pixels) after the adjustment are dropped and it is run again."""


@dataclass
class Silhouettes:
    """One object's masks, measured per frame."""

    visible: np.ndarray
    """[F] bool: the mask has pixels."""
    whole: np.ndarray
    """[F] bool: the whole outline is seen (see the module docstring)."""
    centroid: np.ndarray
    """[F, 2] mask centroid (pixel centres at +0.5), NaN where not visible."""
    radius: np.ndarray
    """[F] sqrt(area / pi) in pixels, 0 where not visible."""
    extent: np.ndarray
    """[F] largest distance of a mask pixel from the centroid, in pixels."""


def measure_silhouettes(labels: np.ndarray, k: int, shrink_tolerance: float) -> Silhouettes:
    """Per-frame outline measurements of object ``k`` in [F, H, W] label maps (0 the background; any other label,
    unknown pixels included, next to the mask means its outline may be hidden there)."""
    num_frames = labels.shape[0]
    visible = np.zeros(num_frames, dtype=bool)
    touches = np.zeros(num_frames, dtype=bool)
    centroid = np.full((num_frames, 2), np.nan)
    radius = np.zeros(num_frames)
    extent = np.zeros(num_frames)
    kernel = np.ones((3, 3), np.uint8)
    for v in range(num_frames):
        mask = labels[v] == k
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue
        visible[v] = True
        uv = np.stack([cols, rows], axis=1) + 0.5
        centroid[v] = uv.mean(axis=0)
        radius[v] = np.sqrt(rows.size / np.pi)
        extent[v] = np.linalg.norm(uv - centroid[v], axis=1).max() + 0.5
        ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
        neighbours = labels[v][ring]
        on_border = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        touches[v] = on_border or bool(np.any((neighbours != 0) & (neighbours != k)))
    whole = visible & ~touches
    candidates = np.flatnonzero(whole)
    for v in candidates:
        nearby = candidates[np.abs(candidates - v) <= 3]
        if radius[v] < (1.0 - shrink_tolerance) * np.median(radius[nearby]):
            whole[v] = False
    return Silhouettes(visible=visible, whole=whole, centroid=centroid, radius=radius, extent=extent)


def local_linear(known_t: np.ndarray, known_y: np.ndarray, query_t: np.ndarray, neighbours: int) -> np.ndarray:
    """[Q, D] values at ``query_t`` of a linear fit over the ``neighbours`` known samples nearest to each query.

    ``known_t`` [N] and ``known_y`` [N, D]; one known sample gives a constant.
    """
    out = np.empty((len(query_t), known_y.shape[1]))
    count = min(max(neighbours, 1), len(known_t))
    for i, t in enumerate(query_t):
        nearest = np.argsort(np.abs(known_t - t), kind="stable")[:count]
        ts, ys = known_t[nearest].astype(np.float64), known_y[nearest]
        if count == 1 or np.ptp(ts) == 0:
            out[i] = ys.mean(axis=0)
            continue
        design = np.stack([np.ones_like(ts), ts - t], axis=1)
        out[i] = np.linalg.lstsq(design, ys, rcond=None)[0][0]
    return out


def centre_offsets(
    silhouettes: Silhouettes, camera: PinholeCamera, world_from_camera: np.ndarray, neighbours: int
) -> np.ndarray:
    """[F, 3] offset from the camera to the object's centre, in world axes and the object's radius as unit.

    ``world_from_camera`` [F, 3, 3] are the background's camera rotations (OpenCV camera axes); NaN rows where the
    object is not visible. Raises ``SfMFailure`` without a whole-outline frame.
    """
    whole = np.flatnonzero(silhouettes.whole)
    if whole.size == 0:
        raise SfMFailure("its outline is never wholly in view (always cut by the image border or another object)")
    u, v = silhouettes.centroid[whole, 0], silhouettes.centroid[whole, 1]
    depth = camera.fx / silhouettes.radius[whole]
    in_camera = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=1)
    in_world = np.einsum("fij,fj->fi", world_from_camera[whole], in_camera * depth[:, None])
    visible = np.flatnonzero(silhouettes.visible)
    offsets = np.full((len(silhouettes.visible), 3), np.nan)
    offsets[visible] = local_linear(whole, in_world, visible, neighbours)
    return offsets


def lift_to_sphere(uv: np.ndarray, centre: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    """[N, 3] points (camera axes, relative to the centre) where pixels ``uv`` [N, 2] meet the front of the unit
    sphere about ``centre`` [N, 3] (camera coordinates); rays that miss it take their point nearest to the centre."""
    rays = np.stack([(uv[:, 0] - camera.cx) / camera.fx, (uv[:, 1] - camera.cy) / camera.fy, np.ones(len(uv))], 1)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    along = np.einsum("ni,ni->n", rays, centre)
    inside = along**2 - np.einsum("ni,ni->n", centre, centre) + 1.0
    distance = along - np.sqrt(np.clip(inside, 0.0, None))
    return rays * distance[:, None] - centre


def kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rotation R minimising sum |target_i - R source_i|^2 over [N, 3] pairs (no translation)."""
    u, _, vt = np.linalg.svd(target.T @ source)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _project(points: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    return np.stack(
        [camera.fx * points[:, 0] / points[:, 2] + camera.cx, camera.fy * points[:, 1] / points[:, 2] + camera.cy], 1
    )


@dataclass
class _Problem:
    """Observations of one object's tracks in the frames it is registered in, indexed for the adjustment."""

    frames: np.ndarray
    """[V] the registered frames, in order."""
    obs_frame: np.ndarray
    """[M] index into ``frames`` of each observation."""
    obs_point: np.ndarray
    """[M] point (track) index of each observation, 0..P-1."""
    uv: np.ndarray
    camera_from_world: np.ndarray
    """[V, 3, 3]"""
    centre: np.ndarray
    """[V, 3] object centre in camera coordinates (OpenCV axes)."""
    camera: PinholeCamera


def _turn_steps(problem: _Problem, lifted_world: np.ndarray, min_shared: int) -> Tuple[np.ndarray, np.ndarray]:
    """[V, 3] angular velocities (rotation vectors per frame, world axes) from each registered frame to the next, from
    Kabsch on lifted points (zero for the first and where not measured), and [V] bool: measured."""
    steps = np.zeros((len(problem.frames), 3))
    tied = np.zeros(len(problem.frames), dtype=bool)
    for i in range(1, len(problem.frames)):
        a, b = problem.obs_frame == i - 1, problem.obs_frame == i
        shared, rows_a, rows_b = np.intersect1d(problem.obs_point[a], problem.obs_point[b], return_indices=True)
        if shared.size >= min_shared:
            turn = Rotation.from_matrix(kabsch(lifted_world[a][rows_a], lifted_world[b][rows_b])).as_rotvec()
            steps[i] = turn / (problem.frames[i] - problem.frames[i - 1])
            tied[i] = True
    return steps, tied


def _triangulate(problem: _Problem, rotations: np.ndarray, num_points: int) -> np.ndarray:
    """[P, 3] least-squares points (object coordinates) of the observations, given world-from-object rotations;
    points seen at too narrow an angle stay near the centre (a small ridge term)."""
    camera_from_object = (problem.camera_from_world @ rotations)[problem.obs_frame]
    centre = problem.centre[problem.obs_frame]
    camera = problem.camera
    normal = np.zeros((num_points, 3, 3))
    right = np.zeros((num_points, 3))
    for axis, (focal, principal) in enumerate(((camera.fx, camera.cx), (camera.fy, camera.cy))):
        coefficient = np.zeros((len(problem.uv), 3))
        coefficient[:, axis] = -1.0
        coefficient[:, 2] = (problem.uv[:, axis] - principal) / focal
        row = np.einsum("mi,mij->mj", coefficient, camera_from_object)
        value = -np.einsum("mi,mi->m", coefficient, centre)
        np.add.at(normal, problem.obs_point, row[:, :, None] * row[:, None, :])
        np.add.at(right, problem.obs_point, row * value[:, None])
    normal += 1e-6 * np.eye(3)
    return np.linalg.solve(normal, right[..., None])[..., 0]


def _initial_rotations(
    problem: _Problem, lifted_world: np.ndarray, min_shared: int, ambiguity_margin: float
) -> Tuple[np.ndarray, np.ndarray, float]:
    """[V, 3, 3] world-from-object rotations to start the adjustment from, [V] bool: the turn from the previous frame
    was measured by shared tracks, and how ambiguous the tracks leave the turn (degrees).

    The start is a constant angular velocity (objects in a video mostly turn steadily), the one whose triangulated
    points reproject best, searched from rest, from 3 degrees a frame about each axis either way, and from the median
    of the turns measured between consecutive frames (Kabsch on tracks lifted onto the sphere; too noisy to chain: on
    room-a's plain box, 20 pixels across, they scatter by several degrees a frame about a true 2.3). The ambiguity is
    the largest median rotation difference between the best and any other search whose robust cost is within
    ``ambiguity_margin`` of it: tracks that cannot tell two turn histories apart give a large one.
    """
    steps, tied = _turn_steps(problem, lifted_world, min_shared)
    num_points = int(problem.obs_point.max()) + 1
    frame_index = problem.frames - problem.frames[0]

    def rotations_at(velocity: np.ndarray) -> np.ndarray:
        return Rotation.from_rotvec(frame_index[:, None] * velocity[None]).as_matrix()

    def residuals(velocity: np.ndarray) -> np.ndarray:
        rotations = rotations_at(velocity)
        error, _ = _errors(problem, rotations, _triangulate(problem, rotations, num_points))
        return error

    starts = [np.zeros(3), *np.radians(3.0) * np.concatenate([np.eye(3), -np.eye(3)])]
    if tied.any():
        starts.append(np.median(steps[tied], axis=0))
    fits = [least_squares(residuals, start, loss="soft_l1", f_scale=1.0, max_nfev=100) for start in starts]
    best = min(fits, key=lambda fit: fit.cost)
    chosen = rotations_at(best.x)
    rivals = [fit for fit in fits if fit.cost <= (1.0 + ambiguity_margin) * best.cost]
    ambiguity = max(
        float(np.median(rotation_angle_deg(rotations_at(fit.x) @ np.swapaxes(chosen, 1, 2)))) for fit in rivals
    )
    return chosen, tied, ambiguity


def _adjust(problem: _Problem, rotations: np.ndarray, points: np.ndarray, scale: float, config: SilhouetteConfig):
    """Bundle adjustment of rotations (all but the first), centres (near their silhouette measurements) and points.

    Returns the world-from-object rotations [V, 3, 3], centres [V, 3] (camera coordinates) and points [P, 3].
    """
    num_views, num_points = len(problem.frames), len(points)
    camera = problem.camera
    depth = problem.centre[:, 2]
    spread = np.stack([np.full(num_views, config.centre_pixels / scale)] * 2 + [config.depth_tolerance * depth], 1)
    sizes = np.cumsum([0, 3 * (num_views - 1), 3 * num_views, 3 * num_points])
    gaps = np.diff(problem.frames).astype(np.float64)  # frames between consecutive registered frames

    def unpack(x: np.ndarray):
        corrections = np.concatenate([np.zeros((1, 3)), x[sizes[0] : sizes[1]].reshape(-1, 3)])
        world_from_object = Rotation.from_rotvec(corrections).as_matrix() @ rotations
        centre = problem.centre + x[sizes[1] : sizes[2]].reshape(-1, 3) * spread
        return world_from_object, centre, x[sizes[2] : sizes[3]].reshape(-1, 3)

    def residuals(x: np.ndarray) -> np.ndarray:
        world_from_object, centre, xyz = unpack(x)
        camera_from_object = problem.camera_from_world @ world_from_object
        in_camera = np.einsum("mij,mj->mi", camera_from_object[problem.obs_frame], xyz[problem.obs_point])
        in_camera += centre[problem.obs_frame]
        reprojection = (_project(in_camera, camera) - problem.uv).ravel()
        centre_prior = x[sizes[1] : sizes[2]]
        sphere = config.sphere_prior * scale * (np.linalg.norm(xyz, axis=1) - 1.0)
        turns = Rotation.from_matrix(world_from_object[1:] @ np.swapaxes(world_from_object[:-1], 1, 2)).as_rotvec()
        velocity = turns / gaps[:, None]
        smooth = config.smoothness * scale * (velocity[1:] - velocity[:-1]).ravel()
        return np.concatenate([reprojection, centre_prior, sphere, smooth])

    sparsity = lil_matrix((2 * len(problem.uv) + 3 * num_views + num_points + 3 * max(num_views - 2, 0), sizes[3]))
    for m, (i, j) in enumerate(zip(problem.obs_frame, problem.obs_point)):
        rows = slice(2 * m, 2 * m + 2)
        if i > 0:
            sparsity[rows, sizes[0] + 3 * (i - 1) : sizes[0] + 3 * i] = 1
        sparsity[rows, sizes[1] + 3 * i : sizes[1] + 3 * i + 3] = 1
        sparsity[rows, sizes[2] + 3 * j : sizes[2] + 3 * j + 3] = 1
    base = 2 * len(problem.uv)
    for i in range(3 * num_views):
        sparsity[base + i, sizes[1] + i] = 1
    base += 3 * num_views
    for j in range(num_points):
        sparsity[base + j, sizes[2] + 3 * j : sizes[2] + 3 * j + 3] = 1
    base += num_points
    for i in range(1, num_views - 1):  # the change of angular velocity at view i involves views i-1, i, i+1
        for view in (i - 1, i, i + 1):
            if view > 0:
                sparsity[base + 3 * (i - 1) : base + 3 * i, 3 * (view - 1) : 3 * view] = 1
    x0 = np.concatenate([np.zeros(sizes[2]), points.ravel()])
    result = least_squares(
        residuals,
        x0,
        jac_sparsity=sparsity.tocsr(),
        loss="huber",
        f_scale=1.0,
        x_scale="jac",
        max_nfev=config.max_evaluations,
    )
    return unpack(result.x)


def _errors(problem: _Problem, world_from_object: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """[M] reprojection errors (pixels) and z-depths of every observation."""
    camera_from_object = problem.camera_from_world @ world_from_object
    in_camera = np.einsum("mij,mj->mi", camera_from_object[problem.obs_frame], points[problem.obs_point])
    in_camera += problem.centre[problem.obs_frame]
    return np.linalg.norm(_project(in_camera, problem.camera) - problem.uv, axis=1), in_camera[:, 2]


@dataclass
class SilhouetteRegistration:
    """What ``register_from_silhouettes`` recovered."""

    sfm: ObjectSfM
    """Poses, points and keypoints in units of the object's radius."""
    turn_measured: np.ndarray
    """[F] bool: registered frames whose rotation from the previous registered frame was measured by shared tracks
    (the first registered frame counts as measured); elsewhere it rests on the steady-turn start and smoothness."""
    silhouettes: Silhouettes
    ambiguity_deg: float = 0.0
    """How far apart (degrees, median over frames) steady turns are that its tracks fit about equally well."""


def register_from_silhouettes(
    tracks: Tracks,
    silhouettes: Silhouettes,
    camera: PinholeCamera,
    background_poses: np.ndarray,
    config: SilhouetteConfig,
) -> SilhouetteRegistration:
    """One object's poses and points from its outlines and tracks (module docstring), in units of its radius.

    ``background_poses`` [F, 4, 4] are the background's camera-to-world poses (OpenGL axes, NaN where not
    registered); the object is registered in every frame where it is visible, the background registered and its
    centre (fitted over time where the outline is not whole) in front of the camera.
    Raises ``SfMFailure`` when it cannot be registered.
    """
    num_frames = len(silhouettes.visible)
    background = np.isfinite(background_poses).all(axis=(1, 2))
    silhouettes = replace(silhouettes, visible=silhouettes.visible & background, whole=silhouettes.whole & background)
    if silhouettes.whole.sum() < config.min_whole_frames:
        raise SfMFailure(
            f"its whole outline is in view in only {int(silhouettes.whole.sum())} frame(s) "
            f"({config.min_whole_frames} needed to place it from its silhouettes)"
        )
    world_from_camera = np.where(background[:, None, None], background_poses[:, :3, :3] @ np.diag([1.0, -1.0, -1.0]), 0)
    offsets = centre_offsets(silhouettes, camera, world_from_camera, config.centre_neighbours)
    in_front = np.einsum("fji,fj->f", world_from_camera, np.nan_to_num(offsets))[:, None] > 0  # z in the camera
    frames = np.flatnonzero(silhouettes.visible & in_front[:, 0])  # an extrapolated centre can land behind it
    view_of_frame = np.full(num_frames, -1)
    view_of_frame[frames] = np.arange(len(frames))
    rows = view_of_frame[tracks.frame] >= 0
    if not rows.any():
        raise SfMFailure("none of its tracks lies in a frame where it is visible")
    used_tracks, obs_point = np.unique(tracks.track[rows], return_inverse=True)
    camera_from_world = np.swapaxes(world_from_camera[frames], 1, 2)
    problem = _Problem(
        frames=frames,
        obs_frame=view_of_frame[tracks.frame[rows]],
        obs_point=obs_point,
        uv=tracks.uv[rows],
        camera_from_world=camera_from_world,
        centre=np.einsum("fij,fj->fi", camera_from_world, offsets[frames]),
        camera=camera,
    )
    lifted = lift_to_sphere(problem.uv, problem.centre[problem.obs_frame], camera)
    lifted_world = np.einsum("mji,mj->mi", problem.camera_from_world[problem.obs_frame], lifted)
    rotations, tied, ambiguity = _initial_rotations(
        problem, lifted_world, config.min_shared_tracks, config.ambiguity_margin
    )
    points = _triangulate(problem, rotations, len(used_tracks))
    scale = float(np.median(silhouettes.radius[frames]))
    keep = np.ones(len(problem.uv), dtype=bool)
    for _ in range(2):
        kept = replace(
            problem, obs_frame=problem.obs_frame[keep], obs_point=problem.obs_point[keep], uv=problem.uv[keep]
        )
        rotations, centre, points = _adjust(kept, rotations, points, scale, config)
        error, depth = _errors(replace(problem, centre=centre), rotations, points)
        keep = error <= config.max_reprojection_error
    keep &= depth > 0
    # points outside the box are not on the object (they would also wreck its scale range)
    keep &= (np.abs(points).max(axis=1) <= config.box_extent * _half_extent(silhouettes))[problem.obs_point]
    if not keep.any():
        raise SfMFailure("none of its tracks triangulates onto the object")
    camera_to_object = np.full((num_frames, 4, 4), np.nan)
    object_from_camera = np.swapaxes(rotations, 1, 2) @ world_from_camera[frames]
    camera_to_object[frames] = np.eye(4)
    camera_to_object[frames, :3, :3] = object_from_camera
    camera_to_object[frames, :3, 3] = -np.einsum("fij,fj->fi", object_from_camera, centre)
    camera_to_object[frames] = camera_to_object[frames] @ OPENCV_TO_OPENGL
    registered = np.zeros(num_frames, dtype=bool)
    registered[frames] = True
    turn_measured = np.zeros(num_frames, dtype=bool)
    turn_measured[frames] = tied
    turn_measured[frames[0]] = True
    sfm = ObjectSfM(
        registered=registered,
        camera_to_object=camera_to_object,
        points=points,
        keypoint_frame=frames[problem.obs_frame[keep]],
        keypoint_uv=problem.uv[keep],
        keypoint_depth=depth[keep],
        keypoint_error=error[keep],
        camera=camera,
    )
    return SilhouetteRegistration(
        sfm=sfm, turn_measured=turn_measured, silhouettes=silhouettes, ambiguity_deg=ambiguity
    )


def _half_extent(silhouettes: Silhouettes) -> float:
    """The largest distance from the centre to the outline over whole-outline frames, in mask radii."""
    whole = silhouettes.whole
    return float(np.max(silhouettes.extent[whole] / silhouettes.radius[whole]))


def silhouette_box(registration: SilhouetteRegistration, config: SilhouetteConfig) -> ObjectBox:
    """The registration in units of its median keypoint depth, with its box (``SilhouetteConfig.box_extent``)."""
    sfm = registration.sfm
    half = config.box_extent * _half_extent(registration.silhouettes)
    unit = float(np.median(sfm.keypoint_depth)) if sfm.keypoint_depth.size else 1.0
    poses = sfm.camera_to_object.copy()
    poses[..., :3, 3] /= unit
    moved = replace(
        sfm,
        camera_to_object=poses,
        points=sfm.points / unit,
        keypoint_depth=sfm.keypoint_depth / unit,
    )
    size = np.full(3, half / unit)
    return ObjectBox(sfm=moved, bbox_min=-size, bbox_max=size)
