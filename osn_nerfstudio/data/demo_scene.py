"""A procedural, seeded, dynamic indoor scene, ray cast by this module and written in the OSN scene format.

The world is a textured room (object 0, the background) holding ``num_objects`` textured rigid objects
on a carousel: object 1 spins at its centre and the others orbit it at a common radius and fixed angular
spacing (so they never collide) while bobbing and spinning. Over the video the carousel turns about once
against the camera's arc, so every orbiting object passes in front of and behind the centre object: each
foreground object occludes, and is occluded by, another one.

Everything is simulated in true metres and then written the way per-object structure-from-motion would
deliver it: object k has its own unit ``c_k`` (true metres per object unit) and origin, so its poses,
bounding box and keypoint depths are in its own arbitrary units. The true relative scales ``c_k / c_0``
go to the evaluation section only. Textures are solid and lighting is baked in each object's local frame,
so an object looks the same in its own frame at every time, as the method assumes.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import time as clock
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from rich.console import Console
from rich.progress import Progress

from osn_nerfstudio import __version__
from osn_nerfstudio.data.scene_format import (
    Evaluation,
    Frame,
    Keypoints,
    PinholeCamera,
    Scene,
    SceneFormatError,
    SceneObject,
    TestView,
    read_scene,
    staged_directory,
    write_amodal_depth,
    write_depth,
    write_mask,
    write_rgb,
    write_scene_metadata,
)
from osn_nerfstudio.data.validation import validate_scene

CONSOLE = Console(stderr=True)
"""Progress and log messages go to stderr, so callers can capture a printed scene path from stdout."""

GENERATOR_VERSION = 2
"""Bump whenever the output for a given config changes, so that cached demo scenes are regenerated."""
TOOL_NAME = "osn-make-demo"
SHAPES = ("box", "sphere", "cylinder", "ellipsoid")
"""Foreground shapes, cycled over objects 1, 2, ..."""
MAX_OBJECTS = 8
ROOM_MIN = np.array([-3.5, 0.0, -3.5])
ROOM_MAX = np.array([3.5, 3.0, 4.5])
CAROUSEL_CENTRE = np.array([0.0, 1.1, 0.0])
"""Centre of the action in metres; the camera always aims here."""
MIN_ORBIT_RADIUS = 1.4
"""Smallest carousel radius (metres): orbiters clear the spinning centre object."""
ORBIT_RADIUS_JITTER = 0.08
ORBITER_CLEARANCE = 0.6
"""Neighbouring orbiters' centres stay 2x this apart (metres); their bounding spheres are under 0.55."""
AMBIENT = 0.45
"""Share of an albedo lit regardless of the surface normal."""
AMODAL_DEPTH_FILE = "ground_truth/amodal_depth.npy"
BBOX_MARGIN = 1.02
"""Bounding boxes are the primitive's extent grown by 2 % so surface points lie strictly inside."""


@dataclass
class DemoSceneConfig:
    """Settings of the procedural demo scene; equal settings give byte-identical images and arrays."""

    seed: int = 0
    """Seed of every random choice: sizes, textures, units, motion phases, keypoints and noise."""
    width: int = 128
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    num_frames: int = 40
    """Number of video frames."""
    fps: float = 10.0
    """Frame rate: frame v is taken at time v / fps seconds."""
    num_objects: int = 3
    """Foreground objects, 1..8 (shapes cycle box, sphere, cylinder, ellipsoid); the room is extra."""
    horizontal_fov_deg: float = 60.0
    """Horizontal field of view of the pinhole camera (square pixels, principal point at the centre)."""
    supersampling: int = 3
    """Anti-aliasing: each RGB pixel averages supersampling x supersampling regular sub-pixel rays."""
    orbit_revolutions: float = 1.0
    """Turns of the carousel over the video; at >= 1 every orbiter passes in front of and behind object 1."""
    min_unit: float = 0.25
    """Smallest per-object unit c_k (true metres per object unit), drawn log-uniformly per object."""
    max_unit: float = 4.0
    """Largest per-object unit c_k."""
    keypoints_per_object_per_frame: int = 60
    """Keypoints drawn per object per frame (fewer where the object shows fewer interior pixels)."""
    keypoint_depth_noise: float = 0.02
    """Relative std of the log-normal depth noise of a weight-1 keypoint; weight w gets this / sqrt(w)."""
    pose_noise_rotation_deg: float = 0.0
    """Std (degrees) of a random rotation of the camera in every written pose; 0 writes exact poses."""
    pose_noise_translation: float = 0.0
    """Std per axis of a random shift of the camera centre in every written pose, relative to the object's
    distance from the camera (0.01 = 1 % of it); 0 writes exact poses."""
    test_view_every: int = 5
    """A novel-view test camera at the time of every N-th frame (frames 0, N, 2N, ...)."""
    test_view_offset: float = 0.4
    """Test cameras are shifted this many true metres sideways (alternating sides) and half of it up from
    the training camera, then re-aimed at the carousel centre."""
    register_only_with_keypoints: bool = False
    """Mark an object unregistered (NaN pose) in frames where it got no keypoints, as per-object SfM
    would; off writes every ground-truth pose."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.num_objects <= MAX_OBJECTS:
            problems.append(f"num_objects must lie in 1..{MAX_OBJECTS}, got {self.num_objects}")
        if self.width < 8 or self.height < 8:
            problems.append(f"image size must be at least 8x8, got {self.width}x{self.height}")
        if self.num_frames < 2 or self.fps <= 0:
            problems.append("num_frames must be >= 2 and fps positive")
        if self.supersampling < 1 or self.test_view_every < 1 or self.keypoints_per_object_per_frame < 1:
            problems.append("supersampling, test_view_every and keypoints_per_object_per_frame must be >= 1")
        if not 0 < self.min_unit <= self.max_unit:
            problems.append("units need 0 < min_unit <= max_unit")
        if min(self.keypoint_depth_noise, self.pose_noise_rotation_deg, self.pose_noise_translation) < 0:
            problems.append("noise levels must be >= 0")
        if not 1.0 <= self.horizontal_fov_deg <= 150.0:
            problems.append("horizontal_fov_deg must lie in [1, 150]")
        if problems:
            raise ValueError("Invalid DemoSceneConfig: " + "; ".join(problems) + ".")


# --------------------------------------------------------------------------------------------- geometry


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """[3, 3] rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def invert_rigid(pose: np.ndarray) -> np.ndarray:
    rotation = pose[:3, :3].T
    return rigid(rotation, -rotation @ pose[:3, 3])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[4, 4] camera-to-world with OpenGL axes (x right, y up, looking along -z), world y up."""
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    return rigid(np.stack([right, np.cross(back, right), back], axis=1), eye)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    return rotation_about(rng.normal(size=3), rng.uniform(0.0, 2.0 * np.pi))


# --------------------------------------------------------------------------------------------- world


@dataclass
class Texture:
    """A solid texture in an object's local frame (metres), lit from a direction fixed in that frame."""

    pattern: str
    """"checker", "stripes", "rings", or "room" (tiled floor, striped walls, plain ceiling)."""
    colours: np.ndarray
    """[C, 3] RGB in [0, 1] that the pattern mixes (room: floor pair, wall pair, ceiling)."""
    period: float
    """Pattern period in metres."""
    axis: np.ndarray
    """[3] unit direction the stripes and rings are laid along."""
    noise_frequencies: np.ndarray
    """[M, 3] cycles per metre of the smooth colour noise modulating the pattern."""
    noise_phases: np.ndarray
    """[M, 3] phases of that noise, one per colour channel so it changes hue as well as brightness."""
    light: np.ndarray
    """[3] unit light direction, fixed in the local frame so shading moves with the object."""


@dataclass
class Motion:
    """Rigid motion of a foreground object on the carousel; ``phase`` runs from 0 to 1 over the video."""

    radius: float
    """Distance (metres) from the carousel axis; 0 for the centre object."""
    angle: float
    """Angular position on the carousel at phase 0, radians."""
    revolutions: float
    """Signed carousel turns over the video."""
    tilt: float
    """Tilt (radians) of the orbit plane about the world x axis, raising the camera's side: the camera looks
    down on the carousel, and a level orbit would pass under its line of sight to the centre object."""
    height: float
    """Mean height above the carousel centre, metres."""
    bob_amplitude: float
    """Amplitude (metres) of a vertical oscillation, two cycles per video."""
    bob_phase: float
    """Phase of that oscillation, radians."""
    spin_axis: np.ndarray
    """[3] world axis of the object's own spin."""
    spin_turns: float
    """Signed turns about ``spin_axis`` over the video."""
    rest_rotation: np.ndarray
    """[3, 3] orientation at phase 0."""

    def local_to_world(self, phase: float) -> np.ndarray:
        angle = self.angle + 2.0 * np.pi * self.revolutions * phase
        bob = self.bob_amplitude * np.sin(2.0 * np.pi * 2.0 * phase + self.bob_phase)
        orbit = rotation_about(np.array([1.0, 0.0, 0.0]), -self.tilt) @ np.array([np.sin(angle), 0.0, np.cos(angle)])
        offset = self.radius * orbit + np.array([0.0, self.height + bob, 0.0])
        spin = rotation_about(self.spin_axis, 2.0 * np.pi * self.spin_turns * phase)
        return rigid(spin @ self.rest_rotation, CAROUSEL_CENTRE + offset)


@dataclass
class CameraPath:
    """The training camera: an arc about the carousel with a slight dolly and bob, aimed at its centre."""

    radius: float
    """Mean horizontal distance from the carousel axis, metres."""
    height: float
    """Mean eye height, metres."""
    arc_start: float
    """Azimuth at phase 0, radians."""
    arc_span: float
    """Signed azimuth swept over the video, radians."""

    def camera_to_world(self, phase: float) -> np.ndarray:
        azimuth = self.arc_start + self.arc_span * phase
        radius = self.radius * (1.0 + 0.08 * np.sin(2.0 * np.pi * phase))
        height = self.height + 0.15 * np.sin(4.0 * np.pi * phase)
        eye = np.array([radius * np.sin(azimuth), height, radius * np.cos(azimuth)])
        return look_at(eye, CAROUSEL_CENTRE)


@dataclass
class DemoObject:
    """One rigid object of the world, with the unit and origin its written scene data use."""

    name: str
    shape: str
    """"room" (seen from inside) or one of ``SHAPES``."""
    half_extent: np.ndarray
    """[3] metres: box half sizes, ellipsoid radii, or cylinder (radius, half height, radius) about local y."""
    unit: float
    """True metres per object unit (c_k)."""
    origin: np.ndarray
    """[3] object-unit coordinates of the local frame's origin."""
    texture: Texture
    motion: Optional[Motion] = None
    """None for the static room, whose local frame is the world frame."""
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """[3] metres: centre of the primitive in its local frame (the room is not centred on the world origin)."""

    def local_to_world(self, phase: float) -> np.ndarray:
        return np.eye(4) if self.motion is None else self.motion.local_to_world(phase)

    def metric_to_units(self, pose: np.ndarray) -> np.ndarray:
        """A metric camera-to-local pose as camera-to-object in this object's units: same rotation, t / c + origin."""
        return rigid(pose[:3, :3], pose[:3, 3] / self.unit + self.origin)

    def bbox(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box in object coordinates (object units) holding the whole primitive."""
        half = self.half_extent * BBOX_MARGIN
        return (self.centre - half) / self.unit + self.origin, (self.centre + half) / self.unit + self.origin


@dataclass
class DemoWorld:
    """The true scene in metres, its camera path, and the units it is written in."""

    config: DemoSceneConfig
    camera: PinholeCamera
    objects: List[DemoObject]
    camera_path: CameraPath

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def units(self) -> np.ndarray:
        """[K] true metres per object unit, c_k."""
        return np.array([o.unit for o in self.objects])

    @property
    def relative_scales(self) -> np.ndarray:
        """[K] true scale of each object relative to the background, s_k = c_k / c_0."""
        return self.units / self.units[0]

    def frame_time(self, frame: int) -> float:
        return frame / self.config.fps

    def phase(self, time: float) -> float:
        """Motion phase at ``time`` seconds: frame v is at phase v / num_frames, so motion loops."""
        return time * self.config.fps / self.config.num_frames

    def camera_to_world(self, time: float) -> np.ndarray:
        """[4, 4] metric camera-to-world of the training camera."""
        return self.camera_path.camera_to_world(self.phase(time))

    def test_camera_to_world(self, time: float, index: int) -> np.ndarray:
        """[4, 4] metric pose of test camera ``index``: the training camera shifted sideways and up, re-aimed."""
        train = self.camera_to_world(time)
        side = self.config.test_view_offset * (1.0 if index % 2 == 0 else -1.0)
        shift = np.array([side, 0.5 * self.config.test_view_offset, 0.0])
        return look_at(train[:3, 3] + train[:3, :3] @ shift, CAROUSEL_CENTRE)

    def object_to_world(self, k: int, time: float) -> np.ndarray:
        """[4, 4] metric local-to-world pose of object k."""
        return self.objects[k].local_to_world(self.phase(time))

    def camera_to_object(self, k: int, camera_to_world: np.ndarray, time: float) -> np.ndarray:
        """P_k: [4, 4] camera-to-object pose in object k's units (camera points also in object-k units)."""
        metric = invert_rigid(self.object_to_world(k, time)) @ camera_to_world
        return self.objects[k].metric_to_units(metric)

    def camera_to_background(self, camera_to_world: np.ndarray) -> np.ndarray:
        """[4, 4] camera-to-background pose in background units (the room's local frame is the world)."""
        return self.objects[0].metric_to_units(camera_to_world)


def _pinhole(config: DemoSceneConfig) -> PinholeCamera:
    focal = 0.5 * config.width / np.tan(np.radians(0.5 * config.horizontal_fov_deg))
    return PinholeCamera(
        width=config.width, height=config.height, fx=focal, fy=focal, cx=0.5 * config.width, cy=0.5 * config.height
    )


def _random_unit(rng: np.random.Generator, config: DemoSceneConfig) -> float:
    return float(np.exp(rng.uniform(np.log(config.min_unit), np.log(config.max_unit))))


def _unit_vector(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _colour_pair(rng: np.random.Generator, hue: float) -> List[Tuple[float, float, float]]:
    """A light and a dark colour of different hues, so patterns keep their contrast in grey too."""
    light = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.3, 0.7), rng.uniform(0.8, 0.95))
    dark = colorsys.hsv_to_rgb((hue + rng.uniform(0.15, 0.5)) % 1.0, rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.5))
    return [light, dark]


def _random_texture(rng: np.random.Generator, pattern: str, period: float) -> Texture:
    hue = rng.uniform()
    colours = _colour_pair(rng, hue)
    if pattern == "room":  # floor pair, wall pair of an opposite hue, pale ceiling
        colours += _colour_pair(rng, hue + 0.5) + [colorsys.hsv_to_rgb(hue, 0.1, 0.9)]
    return Texture(
        pattern=pattern,
        colours=np.array(colours),
        period=period,
        axis=_unit_vector(rng.normal(size=3)),
        # smooth noise a few pattern periods long: visible at 128x96, never pixel-level
        noise_frequencies=rng.normal(size=(4, 3)) / (3.0 * period),
        noise_phases=rng.uniform(0.0, 2.0 * np.pi, size=(4, 3)),
        light=_unit_vector(np.array([0.35, 0.85, 0.4]) + 0.3 * rng.normal(size=3)),
    )


def _room(rng: np.random.Generator, config: DemoSceneConfig) -> DemoObject:
    return DemoObject(
        name="background",
        shape="room",
        half_extent=0.5 * (ROOM_MAX - ROOM_MIN),
        unit=_random_unit(rng, config),
        origin=rng.uniform(-2.0, 2.0, size=3),
        texture=_random_texture(rng, "room", period=0.6),
        centre=0.5 * (ROOM_MIN + ROOM_MAX),
    )


def _orbit_radius(num_orbiters: int) -> float:
    """Carousel radius at which equally spaced orbiters (with angle and radius jitter) never touch."""
    if num_orbiters < 2:
        return MIN_ORBIT_RADIUS
    half_gap = 0.45 * 2.0 * np.pi / num_orbiters  # half the smallest angular gap after jitter
    return max(MIN_ORBIT_RADIUS, ORBITER_CLEARANCE / np.sin(half_gap) + ORBIT_RADIUS_JITTER)


def _foreground_object(
    rng: np.random.Generator, k: int, config: DemoSceneConfig, path: CameraPath, orbit_radius: float
) -> DemoObject:
    """Object k >= 1: object 1 spins at the carousel centre, the others orbit it equally spaced."""
    shape = SHAPES[(k - 1) % len(SHAPES)]
    repeat = (k - 1) // len(SHAPES)
    at_centre = k == 1
    size = rng.uniform(0.3, 0.38) if at_centre else rng.uniform(0.22, 0.3)
    aspect = {
        "box": np.array([1.0, rng.uniform(0.7, 1.2), rng.uniform(0.6, 0.9)]),
        "sphere": np.ones(3),
        "cylinder": np.array([0.75, rng.uniform(1.0, 1.3), 0.75]),
        "ellipsoid": np.array([1.25, rng.uniform(0.6, 0.8), rng.uniform(0.8, 1.0)]),
    }[shape]
    spacing = 2.0 * np.pi / max(config.num_objects - 1, 1)
    motion = Motion(
        radius=0.0 if at_centre else orbit_radius + rng.uniform(-ORBIT_RADIUS_JITTER, ORBIT_RADIUS_JITTER),
        angle=0.0 if at_centre else spacing * (k - 2 + rng.uniform(0.0, 0.1)),
        # the carousel turns against the camera's arc, so relative motion exceeds the configured turns
        revolutions=-config.orbit_revolutions,
        tilt=np.arctan2(path.height - CAROUSEL_CENTRE[1], path.radius),
        height=0.0 if at_centre else rng.uniform(-0.1, 0.1),
        bob_amplitude=rng.uniform(0.03, 0.08) if at_centre else rng.uniform(0.05, 0.12),
        bob_phase=rng.uniform(0.0, 2.0 * np.pi),
        spin_axis=_unit_vector(np.array([0.0, 1.0, 0.0]) + 0.5 * rng.normal(size=3)),
        spin_turns=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)),
        rest_rotation=_random_rotation(rng),
    )
    return DemoObject(
        name=shape if repeat == 0 else f"{shape}-{repeat + 1}",
        shape=shape,
        half_extent=size * aspect,
        unit=_random_unit(rng, config),
        origin=rng.uniform(-2.0, 2.0, size=3),
        texture=_random_texture(rng, ("checker", "stripes", "rings")[(k - 1) % 3], period=0.45 * size),
        motion=motion,
    )


def build_demo_world(config: DemoSceneConfig) -> DemoWorld:
    """The true scene for ``config``, a deterministic function of it (seed included)."""
    rng = np.random.default_rng([config.seed, 0])
    orbit_radius = _orbit_radius(config.num_objects - 1)
    span = np.radians(rng.uniform(35.0, 50.0))
    path = CameraPath(
        radius=orbit_radius + rng.uniform(1.4, 1.7),
        height=rng.uniform(1.6, 1.9),
        arc_start=-0.5 * span,
        arc_span=span,
    )
    objects = [_room(rng, config)]
    objects += [_foreground_object(rng, k, config, path, orbit_radius) for k in range(1, config.num_objects + 1)]
    return DemoWorld(config=config, camera=_pinhole(config), objects=objects, camera_path=path)


# --------------------------------------------------------------------------------------------- ray casting

HIT_EPSILON = 1e-6


def _slabs(half: np.ndarray, origins: np.ndarray, directions: np.ndarray):
    """Slab test against the box [-half, half]: entry and exit distances and the axes of those faces."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / directions
        t_low = (-half - origins) * inverse
        t_high = (half - origins) * inverse
    near, far = np.minimum(t_low, t_high), np.maximum(t_low, t_high)
    rows = np.arange(origins.shape[0])
    enter_axis, exit_axis = near.argmax(axis=1), far.argmin(axis=1)
    return near[rows, enter_axis], far[rows, exit_axis], enter_axis, exit_axis


def _face_normals(directions: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Normals of axis-aligned faces, facing back along the ray."""
    normals = np.zeros_like(directions)
    rows = np.arange(directions.shape[0])
    normals[rows, axis] = -np.sign(directions[rows, axis])
    return normals


def _hit_box(half, origins, directions, inside: bool):
    t_enter, t_exit, enter_axis, exit_axis = _slabs(half, origins, directions)
    if inside:  # the room: the camera is inside, the visible wall is where the ray leaves the box
        return t_exit, _face_normals(directions, exit_axis)
    hit = (t_enter <= t_exit) & (t_enter > HIT_EPSILON)
    return np.where(hit, t_enter, np.inf), _face_normals(directions, enter_axis)


def _hit_ellipsoid(radii, origins, directions):
    scaled_origins, scaled_directions = origins / radii, directions / radii
    a = np.einsum("ij,ij->i", scaled_directions, scaled_directions)
    b = np.einsum("ij,ij->i", scaled_origins, scaled_directions)
    c = np.einsum("ij,ij->i", scaled_origins, scaled_origins) - 1.0
    discriminant = b * b - a * c
    t = (-b - np.sqrt(np.maximum(discriminant, 0.0))) / a
    hit = (discriminant >= 0.0) & (t > HIT_EPSILON)
    normals = (scaled_origins + t[:, None] * scaled_directions) / radii
    return np.where(hit, t, np.inf), normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _hit_cylinder(half, origins, directions):
    """Capped cylinder about the local y axis: radius half[0], half height half[1]."""
    radius, half_height = half[0], half[1]
    ox, oy, oz = origins.T
    dx, dy, dz = directions.T
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - radius * radius
    discriminant = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(discriminant, 0.0))) / a
        side_ok = (discriminant >= 0.0) & (a > 0.0) & (t_side > HIT_EPSILON) & (np.abs(oy + t_side * dy) <= half_height)
        # only the cap facing the ray can be its first hit
        t_cap = (-half_height * np.sign(dy) - oy) / dy
        cap_ok = (t_cap > HIT_EPSILON) & ((ox + t_cap * dx) ** 2 + (oz + t_cap * dz) ** 2 <= radius * radius)
    t_side, t_cap = np.where(side_ok, t_side, np.inf), np.where(cap_ok, t_cap, np.inf)
    on_side = t_side <= t_cap
    t = np.minimum(t_side, t_cap)
    t_finite = np.where(np.isfinite(t), t, 0.0)
    side_normals = np.stack([(ox + t_finite * dx) / radius, np.zeros_like(ox), (oz + t_finite * dz) / radius], axis=1)
    cap_normals = np.stack([np.zeros_like(oy), -np.sign(dy), np.zeros_like(oy)], axis=1)
    return t, np.where(on_side[:, None], side_normals, cap_normals)


def _intersect(obj: DemoObject, origins: np.ndarray, directions: np.ndarray):
    """Ray parameter of the first hit (inf on a miss) and the local surface normal, rays in local metres."""
    origins = origins - obj.centre
    if obj.shape in ("room", "box"):
        return _hit_box(obj.half_extent, origins, directions, inside=obj.shape == "room")
    if obj.shape == "cylinder":
        return _hit_cylinder(obj.half_extent, origins, directions)
    return _hit_ellipsoid(obj.half_extent, origins, directions)


# --------------------------------------------------------------------------------------------- shading


def _smooth_noise(texture: Texture, points: np.ndarray) -> np.ndarray:
    """[N, 3] smooth colour noise in [-1, 1]: a few random 3D sinusoids, phase-shifted per channel."""
    waves = 2.0 * np.pi * points @ texture.noise_frequencies.T
    return np.sin(waves[:, :, None] + texture.noise_phases[None]).mean(axis=1)


def _mix(colours: np.ndarray, amount: np.ndarray) -> np.ndarray:
    return colours[0] * (1.0 - amount[:, None]) + colours[1] * amount[:, None]


def _room_albedo(texture: Texture, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Checkered floor, striped walls (tinted per orientation), plain ceiling."""
    tiles = (np.floor(points[:, 0] / texture.period) + np.floor(points[:, 2] / texture.period)) % 2
    along_wall = np.where(np.abs(normals[:, 2]) > 0.5, points[:, 0], points[:, 2])
    stripes = 0.5 + 0.5 * np.sin(2.0 * np.pi * along_wall / (1.5 * texture.period))
    walls = _mix(texture.colours[2:4], stripes) * np.where(np.abs(normals[:, 0]) > 0.5, 0.85, 1.0)[:, None]
    albedo = np.where((normals[:, 1] > 0.5)[:, None], _mix(texture.colours[0:2], tiles), walls)
    return np.where((normals[:, 1] < -0.5)[:, None], texture.colours[4], albedo)


def _object_albedo(texture: Texture, points: np.ndarray) -> np.ndarray:
    along = points @ texture.axis / texture.period
    if texture.pattern == "checker":
        amount = np.floor(points / texture.period).sum(axis=1) % 2
    elif texture.pattern == "stripes":
        amount = 0.5 + 0.5 * np.sin(2.0 * np.pi * along)
    else:  # rings about the texture axis
        across = np.linalg.norm(points / texture.period - along[:, None] * texture.axis, axis=1)
        amount = 0.5 + 0.5 * np.sin(2.0 * np.pi * across)
    return _mix(texture.colours, amount)


def _shade(texture: Texture, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """[N, 3] RGB of local surface points; light and texture are fixed in the local frame."""
    if texture.pattern == "room":
        albedo = _room_albedo(texture, points, normals)
    else:
        albedo = _object_albedo(texture, points)
    albedo = albedo * (1.0 + 0.25 * _smooth_noise(texture, points))
    diffuse = np.clip(normals @ texture.light, 0.0, 1.0)
    return np.clip(albedo * (AMBIENT + (1.0 - AMBIENT) * diffuse)[:, None], 0.0, 1.0)


# --------------------------------------------------------------------------------------------- rendering


@dataclass
class RenderedView:
    """A rendered view; depth and labels come from the pixel-centre rays."""

    rgb: Optional[np.ndarray]
    """[H, W, 3] float RGB in [0, 1] (None when rendered without shading)."""
    depth: np.ndarray
    """[H, W] z-depth in true metres (inf where no rendered object is hit)."""
    labels: np.ndarray
    """[H, W] int64 id of the nearest rendered object (-1 where none is hit)."""


def pixel_rays(camera: PinholeCamera, camera_to_world: np.ndarray, uv: np.ndarray):
    """World rays through pixel positions ``uv`` [N, 2]; directions are scaled so the ray parameter is z-depth."""
    local = np.stack(
        [(uv[:, 0] - camera.cx) / camera.fx, -(uv[:, 1] - camera.cy) / camera.fy, -np.ones(uv.shape[0])], axis=1
    )
    directions = local @ camera_to_world[:3, :3].T
    return np.broadcast_to(camera_to_world[:3, 3], directions.shape), directions


def pixel_grid(camera: PinholeCamera, samples_per_side: int = 1) -> np.ndarray:
    """[H * W * s * s, 2] regular sub-pixel positions, the s * s samples of each pixel contiguous."""
    offsets = (np.arange(samples_per_side) + 0.5) / samples_per_side
    v, u, dv, du = np.meshgrid(np.arange(camera.height), np.arange(camera.width), offsets, offsets, indexing="ij")
    return np.stack([u + du, v + dv], axis=-1).reshape(-1, 2)


def cast_rays(
    world: DemoWorld,
    time: float,
    origins: np.ndarray,
    directions: np.ndarray,
    objects: Optional[Sequence[int]] = None,
    shade: bool = True,
):
    """Nearest hit among ``objects`` (all by default) at ``time``: (rgb [N, 3] or None, z-depth [N], labels [N])."""
    phase = world.phase(time)
    depth = np.full(origins.shape[0], np.inf)
    labels = np.full(origins.shape[0], -1, dtype=np.int64)
    rgb = np.zeros((origins.shape[0], 3)) if shade else None
    for k in range(world.num_objects) if objects is None else objects:
        obj = world.objects[k]
        world_to_local = invert_rigid(obj.local_to_world(phase))
        local_origins = origins @ world_to_local[:3, :3].T + world_to_local[:3, 3]
        local_directions = directions @ world_to_local[:3, :3].T
        t, normals = _intersect(obj, local_origins, local_directions)
        nearer = t < depth
        depth[nearer], labels[nearer] = t[nearer], k
        if rgb is not None:
            points = local_origins[nearer] + t[nearer, None] * local_directions[nearer]
            rgb[nearer] = _shade(obj.texture, points, normals[nearer])
    return rgb, depth, labels


def render_view(
    world: DemoWorld,
    camera_to_world: np.ndarray,
    time: float,
    objects: Optional[Sequence[int]] = None,
    supersampling: int = 1,
    shade: bool = True,
) -> RenderedView:
    """Render ``objects`` (all by default; a single one gives its amodal silhouette) from a metric camera pose."""
    camera = world.camera
    shape = (camera.height, camera.width)
    centres = pixel_rays(camera, camera_to_world, pixel_grid(camera))
    _, depth, labels = cast_rays(world, time, *centres, objects=objects, shade=False)
    rgb = None
    if shade:
        samples = pixel_rays(camera, camera_to_world, pixel_grid(camera, supersampling))
        colours, _, _ = cast_rays(world, time, *samples, objects=objects)
        rgb = colours.reshape(*shape, supersampling**2, 3).mean(axis=2)
    return RenderedView(rgb=rgb, depth=depth.reshape(shape), labels=labels.reshape(shape))


def occlusion_counts(world: DemoWorld, times: Sequence[float]) -> np.ndarray:
    """[K, K] training-view pixels where object i is visible in front of object j's amodal silhouette.

    Row 0 counts pixels where the room hides an object, which never happens while objects stay inside it.
    """
    counts = np.zeros((world.num_objects, world.num_objects), dtype=np.int64)
    for time in times:
        camera_to_world = world.camera_to_world(time)
        visible = render_view(world, camera_to_world, time, shade=False).labels
        for j in range(1, world.num_objects):
            behind = render_view(world, camera_to_world, time, objects=[j], shade=False).labels == j
            counts[:, j] += np.bincount(visible[behind & (visible != j)], minlength=world.num_objects)
    return counts


# --------------------------------------------------------------------------------------------- scene data


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def texture_strength(rgb: np.ndarray) -> np.ndarray:
    """[H, W] image gradient magnitude: keypoint detectors favour textured pixels."""
    grey = rgb.mean(axis=2).astype(np.float32)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


def keypoint_pixels(
    labels: np.ndarray, strength: np.ndarray, k: int, count: int, rng: np.random.Generator, jitter: float = 0.4
) -> np.ndarray:
    """[n, 2] (u, v) positions of up to ``count`` keypoints on object k's visible interior, favouring texture:
    pixel centres moved by up to ``jitter`` pixels."""
    interior = cv2.erode((labels == k).astype(np.uint8), np.ones((3, 3), np.uint8))  # off occlusion boundaries
    rows, cols = np.nonzero(interior)
    if rows.size == 0:
        return np.zeros((0, 2))
    preference = strength[rows, cols] + 0.1 * strength[rows, cols].mean() + 1e-6
    pick = rng.choice(rows.size, size=min(count, rows.size), replace=False, p=preference / preference.sum())
    offset = rng.uniform(-jitter, jitter, size=(pick.size, 2)) if jitter > 0 else 0.0
    return np.stack([cols[pick], rows[pick]], axis=1) + 0.5 + offset


def noisy_depths(depth: np.ndarray, noise: float, rng: np.random.Generator):
    """Depths with log-normal noise and weights from a simulated reprojection error: std = noise / sqrt(weight)."""
    error = np.abs(rng.normal(size=depth.shape))  # reprojection error in units of its std
    weight = 1.0 / (1.0 + error**2)
    return depth * np.exp(noise / np.sqrt(weight) * rng.normal(size=depth.shape)), weight


def _frame_keypoints(world: DemoWorld, frame: int, camera_to_world: np.ndarray, view: RenderedView) -> Keypoints:
    """Keypoints of every object visible in a frame, depths in object units from exact sub-pixel rays."""
    config = world.config
    rng = np.random.default_rng([config.seed, 1, frame])
    strength = texture_strength(view.rgb)
    uv_per_object = [
        keypoint_pixels(view.labels, strength, k, config.keypoints_per_object_per_frame, rng)
        for k in range(world.num_objects)
    ]
    object_id = np.concatenate([np.full(len(uv), k) for k, uv in enumerate(uv_per_object)]).astype(np.int64)
    uv = np.concatenate(uv_per_object)
    time = world.frame_time(frame)
    _, depth, labels = cast_rays(world, time, *pixel_rays(world.camera, camera_to_world, uv), shade=False)
    keep = labels == object_id  # a sub-pixel ray may graze past a thin silhouette
    object_id, uv, depth = object_id[keep], uv[keep], depth[keep]
    depth, weight = noisy_depths(depth / world.units[object_id], config.keypoint_depth_noise, rng)
    return Keypoints(object_id=object_id, frame=np.full(object_id.size, frame), uv=uv, depth=depth, weight=weight)


def _perturbed(pose: np.ndarray, distance: float, config: DemoSceneConfig, rng: np.random.Generator) -> np.ndarray:
    """``pose`` with the camera rotated and shifted at random (translation relative to ``distance``)."""
    rotation = rotation_about(rng.normal(size=3), np.radians(config.pose_noise_rotation_deg) * rng.normal())
    shift = config.pose_noise_translation * distance * rng.normal(size=3)
    return pose @ rigid(rotation, shift)


def _written_poses(world: DemoWorld, frame: int, camera_to_world: np.ndarray) -> np.ndarray:
    """[K, 4, 4] camera-to-object poses of a frame in object units, with the configured pose noise."""
    config = world.config
    time = world.frame_time(frame)
    poses = np.stack([world.camera_to_object(k, camera_to_world, time) for k in range(world.num_objects)])
    if config.pose_noise_rotation_deg == 0.0 and config.pose_noise_translation == 0.0:
        return poses
    rng = np.random.default_rng([config.seed, 2, frame])
    for k, obj in enumerate(world.objects):
        centre = obj.centre / obj.unit + obj.origin
        distance = float(np.linalg.norm(centre - poses[k, :3, 3]))  # camera to object centre, object units
        poses[k] = _perturbed(poses[k], distance, config, rng)
    return poses


def _write_view(root: Path, stem: str, view: RenderedView, background_unit: float) -> Tuple[str, str, str]:
    """Write image, label mask and background-unit depth; return their scene-relative paths."""
    image, mask, depth = f"images/{stem}.png", f"masks/{stem}.png", f"depth/{stem}.npy"
    write_rgb(root / image, to_uint8(view.rgb))
    write_mask(root / mask, view.labels)
    write_depth(root / depth, view.depth / background_unit)
    return image, mask, depth


def _provenance(config: DemoSceneConfig) -> dict:
    return {
        "tool": TOOL_NAME,
        "version": __version__,
        "settings": asdict(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _concatenate(parts: List[Keypoints]) -> Keypoints:
    return Keypoints(
        object_id=np.concatenate([p.object_id for p in parts]),
        frame=np.concatenate([p.frame for p in parts]),
        uv=np.concatenate([p.uv for p in parts]),
        depth=np.concatenate([p.depth for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
    )


def _render_frame(world: DemoWorld, root: Path, frame: int) -> Tuple[Frame, Keypoints, np.ndarray, np.ndarray]:
    """Write a training frame's files; return its entry, keypoints, [K, 4, 4] written poses and [K, H, W] amodal
    depth (background units)."""
    time = world.frame_time(frame)
    camera_to_world = world.camera_to_world(time)
    view = render_view(world, camera_to_world, time, supersampling=world.config.supersampling)
    image, mask, depth = _write_view(root, f"{frame:05d}", view, world.units[0])
    keypoints = _frame_keypoints(world, frame, camera_to_world, view)
    alone = [
        render_view(world, camera_to_world, time, objects=[k], shade=False).depth for k in range(world.num_objects)
    ]
    return (
        Frame(image=image, mask=mask, time=time, depth=depth),
        keypoints,
        _written_poses(world, frame, camera_to_world),
        np.stack(alone) / world.units[0],
    )


def _render_test_view(world: DemoWorld, root: Path, index: int, frame: int) -> TestView:
    """Write test view ``index``, taken at the time of ``frame``, and return its entry."""
    time = world.frame_time(frame)
    camera_to_world = world.test_camera_to_world(time, index)
    view = render_view(world, camera_to_world, time, supersampling=world.config.supersampling)
    image, mask, depth = _write_view(root, f"test_{index:05d}", view, world.units[0])
    pose = world.camera_to_background(camera_to_world)
    return TestView(image=image, time=time, camera_to_background=pose, mask=mask, depth=depth)


def _render_scene(world: DemoWorld, root: Path) -> Scene:
    """Render every frame and test view of ``world`` into ``root`` and write the scene files."""
    config = world.config
    test_frames = range(0, config.num_frames, config.test_view_every)
    with Progress(console=CONSOLE, transient=True) as progress:
        task = progress.add_task("Rendering the demo scene", total=config.num_frames + len(test_frames))
        frames, keypoints, poses, amodal = [], [], [], []
        for v in range(config.num_frames):
            for results, result in zip((frames, keypoints, poses, amodal), _render_frame(world, root, v)):
                results.append(result)
            progress.advance(task)
        test_views = []
        for i, v in enumerate(test_frames):
            test_views.append(_render_test_view(world, root, i, v))
            progress.advance(task)
    all_keypoints = _concatenate(keypoints)
    unseen = [o.name for k, o in enumerate(world.objects) if not np.any(all_keypoints.object_id == k)]
    if unseen:
        raise ValueError(
            f"Demo scene: {', '.join(unseen)} never show(s) enough pixels for a keypoint at "
            f"{config.width}x{config.height}; use a larger image or fewer objects."
        )
    registered = np.full((world.num_objects, config.num_frames), not config.register_only_with_keypoints)
    registered[all_keypoints.object_id, all_keypoints.frame] = True
    camera_to_object = np.stack(poses, axis=1)
    camera_to_object[~registered] = np.nan
    scene = Scene(
        root=root,
        camera=world.camera,
        frames=frames,
        objects=[SceneObject(o.name, *o.bbox()) for o in world.objects],
        camera_to_object=camera_to_object,
        registered=registered,
        keypoints=all_keypoints,
        evaluation=Evaluation(
            test_views=test_views, relative_scales=world.relative_scales, amodal_depth=AMODAL_DEPTH_FILE
        ),
        provenance=_provenance(config),
    )
    write_amodal_depth(root / AMODAL_DEPTH_FILE, np.stack(amodal, axis=1))
    write_scene_metadata(scene)
    return scene


# --------------------------------------------------------------------------------------------- entry points


def make_demo_scene(destination: Path, config: Optional[DemoSceneConfig] = None) -> Scene:
    """Generate the demo scene into ``destination`` (which must not exist), staged and moved into place; ``config``
    defaults to ``DemoSceneConfig()``."""
    config = config if config is not None else DemoSceneConfig()
    destination = Path(destination)
    world = build_demo_world(config)
    with staged_directory(destination) as staging:
        scene = _render_scene(world, staging)
        validate_scene(scene)  # a generator bug must not leave a broken scene in place
    scene.root = destination
    return scene


def demo_cache_dir() -> Path:
    """Where generated demo scenes are cached: ``$OSN_CACHE_DIR/demo`` or ``~/.cache/osn-nerfstudio/demo``."""
    return Path(os.environ.get("OSN_CACHE_DIR", "~/.cache/osn-nerfstudio")).expanduser() / "demo"


def _settings(config: DemoSceneConfig) -> dict:
    """The config as it reads back from ``scene.json``."""
    return json.loads(json.dumps(asdict(config)))


def demo_scene_name(config: DemoSceneConfig) -> str:
    """Cache directory name: a hash of the settings and the generator version."""
    key = json.dumps({"generator": GENERATOR_VERSION, "settings": _settings(config)}, sort_keys=True)
    return f"demo-v{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _check_cached_scene(root: Path, config: DemoSceneConfig) -> None:
    """Cheap reuse check: metadata valid, made by this generator with these settings, files present."""
    advice = "Delete that directory to have it regenerated."
    try:
        scene = read_scene(root)
        validate_scene(scene, check_files=False)
    except SceneFormatError as err:
        raise SceneFormatError(f"{root}: the cached demo scene is unusable. {advice}\n{err}") from err
    if scene.provenance.get("tool") != TOOL_NAME or scene.provenance.get("settings") != _settings(config):
        raise SceneFormatError(f"{root}: holds a scene made by something else or with other settings. {advice}")
    named = (
        [f.image for f in scene.frames] + [f.mask for f in scene.frames] + [f.depth for f in scene.frames if f.depth]
    )
    missing = [name for name in named if not scene.path(name).is_file()]
    if missing:
        raise SceneFormatError(
            f"{root}: the cached demo scene lacks {len(missing)} file(s), e.g. {missing[0]}. {advice}"
        )


def ensure_demo_scene(config: Optional[DemoSceneConfig] = None, cache_dir: Optional[Path] = None) -> Path:
    """The demo scene for ``config`` (default: ``DemoSceneConfig()``) in the cache, generated on first use and reused
    afterwards."""
    config = config if config is not None else DemoSceneConfig()
    root = Path(cache_dir if cache_dir is not None else demo_cache_dir()) / demo_scene_name(config)
    if root.exists():
        CONSOLE.print(f"Using the cached demo scene {root}")
    else:
        CONSOLE.print(f"Generating the demo scene into {root}")
        start = clock.perf_counter()
        try:
            make_demo_scene(root, config)
        except OSError:
            if not root.exists():
                raise
            # another process generated the same scene meanwhile: check and reuse it
        CONSOLE.print(f"[green]Demo scene ready[/green] in {clock.perf_counter() - start:.1f} s")
    _check_cached_scene(root, config)
    return root
