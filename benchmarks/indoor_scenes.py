"""The indoor benchmark scenes: rooms rendered by Blender's Cycles, written in the OSN scene format.

    python benchmarks/indoor_scenes.py [--scenes room-a room-b room-c] [--cache DIR] [--check-noise]

Each scene is a closed room (textured walls, floor and ceiling, soft light from area lights) with static furniture
that objects pass behind, and 3 to 5 rigid objects of varied shape and texture, one of them weakly textured, that
slide, roll and hover over the floor with mutual occlusions, entering and leaving the frame. 40 frames at 320x240
(10 fps) from a moving camera, and 40 test views from a second camera path at the same times, each with a
co-visibility mask. Every object is written in its own random unit (0.3 to 3 metres per unit) with exact poses and
keypoint depths with 1 % noise; ``evaluation.amodal_depth`` holds every object's depth alone at every pixel, from
which ``data/ground_truth.py`` computes the exact valid set.

Rendering needs the ``bpy`` package (``pip install -e '.[blender]'``); it runs in a subprocess
(``benchmarks/indoor/blender_render.py``). Scenes are cached in ``$OSN_CACHE_DIR/benchmarks/indoor`` (default
``~/.cache/osn-nerfstudio``) and reused while their specification is unchanged; the command prints where each one
is. ``--check-noise`` renders the first frame again with another Cycles seed and reports the PSNR between the two.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from osn_nerfstudio.data.demo_scene import keypoint_pixels, noisy_depths, texture_strength  # noqa: E402
from osn_nerfstudio.data.scene_format import (  # noqa: E402
    Evaluation,
    Frame,
    Keypoints,
    PinholeCamera,
    Scene,
    SceneObject,
    TestView,
    staged_directory,
    write_amodal_depth,
    write_depth,
    write_mask,
    write_rgb,
    write_scene_metadata,
)
from osn_nerfstudio.data.validation import validate_scene  # noqa: E402

SPEC_VERSION = 1
"""Bump when the specification or the export changes, so that cached scenes are made again."""
WIDTH, HEIGHT, FOCAL = 320, 240, 300.0
NUM_FRAMES, FPS = 40, 10.0
RGB_SAMPLES = 32
UNIT_RANGE = (0.3, 3.0)
"""Each object's own unit, in metres, drawn log-uniformly."""
KEYPOINTS = {"background": 300, "object": 100}
"""Keypoints per frame of the background and of each foreground object (fewer where less of it shows)."""
KEYPOINT_DEPTH_NOISE = 0.01
BBOX_MARGIN = 0.02
COVISIBLE_FRAMES = 2
"""A test pixel is scored when at least this many training frames show its surface point."""
COVISIBLE_DEPTH_TOLERANCE = 0.02


# ------------------------------------------------------------------------------------------------ geometry


def look_at(eye: Sequence[float], target: Sequence[float], up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world of a Blender camera (looks along -z, y up) at ``eye`` looking at ``target`` (Z-up world)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, np.cross(right, forward), -forward, eye
    return pose


def rotation(axis: Sequence[float], angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def rigid(rot: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, translation
    return pose


def bezier(points: Sequence[Sequence[float]], p: float) -> np.ndarray:
    """A point of the quadratic (3 points) or cubic (4 points) Bezier curve at parameter p in [0, 1]."""
    points = [np.asarray(q, float) for q in points]
    while len(points) > 1:
        points = [(1 - p) * a + p * b for a, b in zip(points[:-1], points[1:])]
    return points[0]


# ------------------------------------------------------------------------------------------------ layouts


@dataclass
class Mover:
    """A foreground object and how it moves (positions in metres, Z-up, over the clip's parameter p in [0, 1])."""

    name: str
    shape: str
    size: Sequence[float]
    """Full extents (x, y, z) of the object, metres."""
    material: dict
    path: Sequence[Sequence[float]]
    """Bezier control points of its centre's (x, y) over the clip."""
    motion: str = "slide"
    """"slide" (on the floor, turning about the vertical), "roll" (a ball rolling on the floor) or "hover"."""
    height: float = 0.0
    """Centre height of a hovering object (it bobs 8 cm about it)."""
    turns: float = 0.25
    """Turns about the vertical over the clip (slide, hover)."""

    def matrix(self, p: float) -> np.ndarray:
        x, y = bezier(self.path, p)
        if self.motion == "roll":
            radius = self.size[2] / 2
            samples = [bezier(self.path, q) for q in np.linspace(0, p, 64)]
            distance = sum(np.linalg.norm(b - a) for a, b in zip(samples[:-1], samples[1:]))
            heading = bezier(self.path, min(p + 1e-3, 1.0)) - bezier(self.path, max(p - 1e-3, 0.0))
            axis = np.cross([0.0, 0.0, 1.0], [*heading, 0.0])
            return rigid(rotation(axis, distance / radius), [x, y, radius])
        spin = rotation([0, 0, 1], 2 * math.pi * self.turns * p)
        if self.motion == "hover":
            tilt = rotation([1, 0, 0], 0.25 * math.sin(2 * math.pi * p))
            return rigid(spin @ tilt, [x, y, self.height + 0.08 * math.sin(3 * math.pi * p)])
        return rigid(spin, [x, y, self.size[2] / 2])

    @property
    def radius(self) -> float:
        """Radius of a sphere around the object (for collision checks)."""
        return 0.5 * float(np.linalg.norm(self.size))


@dataclass
class Layout:
    """A room, its furniture, the objects that move in it, the lights and the two camera paths."""

    name: str
    room: Sequence[float]
    """Width (x), depth (y) and height (z) of the room, metres; the floor is z = 0, the room centred on x = y = 0."""
    materials: Dict[str, dict]
    """Floor, wall, ceiling and furniture materials by name (``blender_render.build_material``)."""
    furniture: List[dict]
    """Static parts: shape, size (full extents), centre, yaw, material."""
    movers: List[Mover]
    lights: List[dict]
    camera: Sequence[Sequence[float]]
    """Bezier control points of the training camera's position."""
    target: Sequence[Sequence[float]]
    """Bezier control points of the point it looks at."""
    test_offset: Sequence[float] = (0.5, 0.0, 0.3)
    """The test camera is the training camera moved this much along its right, forward and world-up axes, looking at
    the same point."""
    walls: Sequence[str] = field(default_factory=lambda: ["wall_a", "wall_b", "wall_a", "wall_b"])


def _colours(rng: np.random.Generator, base: Sequence[float], spread: float = 0.06) -> list:
    return [float(np.clip(c + rng.uniform(-spread, spread), 0.02, 0.95)) for c in base]


def _paint(rng: np.random.Generator, kind: str, a, b=None, **extra) -> dict:
    material = {"type": kind, "colours": [_colours(rng, a), _colours(rng, b if b is not None else a)]}
    material.update(extra)
    return material


def _jitter(rng: np.random.Generator, points, amount: float = 0.15):
    return [[float(c + rng.uniform(-amount, amount)) for c in point] for point in points]


def _room_materials(rng: np.random.Generator, floor: dict, wall_a: dict, wall_b: dict) -> Dict[str, dict]:
    return {
        "floor": floor,
        "wall_a": wall_a,
        "wall_b": wall_b,
        "ceiling": _paint(rng, "flat", (0.85, 0.85, 0.82), grain=0.08, grain_scale=8.0, roughness=0.9),
    }


def layout_room_a(rng: np.random.Generator) -> Layout:
    """A living room: a table, a cabinet and a pillar; a plain box slides behind the pillar, a ball rolls across in
    front of it, a monkey head hovers between them and a can crosses the whole view."""
    materials = _room_materials(
        rng,
        _paint(rng, "checker", (0.75, 0.72, 0.66), (0.35, 0.3, 0.26), scale=4.0, grain=0.15, roughness=0.5),
        _paint(rng, "noise", (0.62, 0.66, 0.72), (0.45, 0.5, 0.58), scale=6.0, grain=0.1),
        _paint(rng, "brick", (0.62, 0.3, 0.22), (0.5, 0.24, 0.18), scale=3.0, grain=0.1),
    )
    materials.update(
        wood=_paint(rng, "wave", (0.55, 0.36, 0.2), (0.35, 0.2, 0.1), scale=3.0, grain=0.1, roughness=0.4),
        stone=_paint(rng, "noise", (0.75, 0.74, 0.7), (0.5, 0.5, 0.48), scale=12.0, roughness=0.7),
        box=_paint(rng, "flat", (0.85, 0.42, 0.12), grain=0.04, grain_scale=30.0, roughness=0.6),
        ball=_paint(rng, "checker", (0.9, 0.85, 0.2), (0.15, 0.3, 0.75), scale=9.0, roughness=0.3),
        monkey=_paint(rng, "noise", (0.3, 0.6, 0.3), (0.1, 0.3, 0.15), scale=14.0, roughness=0.5),
        can=_paint(rng, "wave", (0.8, 0.1, 0.15), (0.95, 0.9, 0.85), scale=6.0, distortion=0.0, roughness=0.3),
    )
    furniture = [
        dict(shape="box", size=[1.2, 0.7, 0.05], centre=[2.3, 1.0, 0.75], yaw=0.0, material="wood"),
        *[
            dict(shape="box", size=[0.06, 0.06, 0.73], centre=[2.3 + dx, 1.0 + dy, 0.365], yaw=0.0, material="wood")
            for dx, dy in ((-0.55, -0.3), (0.55, -0.3), (-0.55, 0.3), (0.55, 0.3))
        ],
        dict(shape="box", size=[0.7, 0.5, 1.3], centre=[-2.4, 0.6, 0.65], yaw=-0.2, material="wood"),
        dict(shape="cylinder", size=[0.36, 0.36, 3.0], centre=[0.15, 2.7, 1.5], yaw=0.0, material="stone"),
    ]
    movers = [
        Mover("box", "box", [0.45, 0.45, 0.45], materials["box"],
              _jitter(rng, [[-2.6, 3.5], [0.0, 3.7], [2.4, 3.4]], 0.1)),
        Mover("ball", "sphere", [0.44, 0.44, 0.44], materials["ball"],
              _jitter(rng, [[2.2, -0.8], [0.6, 0.3], [-1.5, 1.6]], 0.1), motion="roll"),
        Mover("monkey", "monkey", [0.5, 0.42, 0.4], materials["monkey"],
              _jitter(rng, [[-1.6, 1.4], [0.0, 1.1], [1.0, 1.9]], 0.1), motion="hover", height=0.55, turns=-0.3),
        Mover("can", "cylinder", [0.24, 0.24, 0.36], materials["can"],
              _jitter(rng, [[3.6, 2.1], [0.0, 1.9], [-3.6, 2.1]], 0.1), turns=0.6),
    ]
    lights = [
        dict(type="AREA", size=[2.0, 2.0], energy=150.0, centre=[0.5, 0.5, 2.95]),
        dict(type="AREA", size=[1.2, 1.2], energy=60.0, centre=[-2.0, -2.0, 2.95]),
    ]
    return Layout(
        name="room-a", room=[8.0, 9.0, 3.0], materials=materials, furniture=furniture, movers=movers, lights=lights,
        camera=_jitter(rng, [[-1.4, -3.7, 1.3], [0.0, -3.9, 1.35], [1.4, -3.5, 1.25]], 0.05),
        target=[[-0.4, 1.5, 0.4], [0.4, 1.5, 0.4]],
        walls=["wall_a", "wall_b", "wall_a", "wall_a"],
    )


def layout_room_b(rng: np.random.Generator) -> Layout:
    """A studio with a shelf, a low table and a column; five objects: a plain box and a cone slide, a ball rolls, a
    monkey head hovers low and a cylinder enters from the left, while the camera arcs around the middle."""
    materials = _room_materials(
        rng,
        _paint(rng, "brick", (0.55, 0.45, 0.35), (0.45, 0.36, 0.28), scale=2.5, grain=0.1, mortar=(0.7, 0.68, 0.62)),
        _paint(rng, "wave", (0.8, 0.78, 0.7), (0.65, 0.62, 0.55), scale=2.0, grain=0.1),
        _paint(rng, "noise", (0.5, 0.62, 0.55), (0.35, 0.45, 0.4), scale=5.0, grain=0.1),
    )
    materials.update(
        shelf=_paint(rng, "noise", (0.3, 0.32, 0.36), (0.2, 0.2, 0.24), scale=10.0, roughness=0.5),
        table=_paint(rng, "checker", (0.7, 0.7, 0.68), (0.55, 0.55, 0.53), scale=8.0, roughness=0.4),
        column=_paint(rng, "voronoi", (0.8, 0.78, 0.72), (0.6, 0.58, 0.52), scale=8.0),
        box=_paint(rng, "flat", (0.25, 0.55, 0.8), grain=0.03, grain_scale=30.0),
        cone=_paint(rng, "checker", (0.95, 0.6, 0.1), (0.3, 0.15, 0.05), scale=7.0, roughness=0.4),
        ball=_paint(rng, "voronoi", (0.9, 0.2, 0.3), (0.95, 0.85, 0.8), scale=10.0, roughness=0.3),
        monkey=_paint(rng, "noise", (0.75, 0.65, 0.35), (0.4, 0.3, 0.1), scale=12.0),
        cylinder=_paint(rng, "wave", (0.2, 0.6, 0.5), (0.9, 0.9, 0.8), scale=5.0, distortion=1.0),
    )
    furniture = [
        dict(shape="box", size=[1.6, 0.4, 1.8], centre=[-1.9, 2.4, 0.9], yaw=0.15, material="shelf"),
        dict(shape="box", size=[1.0, 0.6, 0.4], centre=[1.0, 0.6, 0.2], yaw=-0.3, material="table"),
        dict(shape="cylinder", size=[0.3, 0.3, 3.0], centre=[0.9, 2.6, 1.5], yaw=0.0, material="column"),
    ]
    movers = [
        Mover("box", "box", [0.5, 0.4, 0.35], materials["box"],
              _jitter(rng, [[-0.6, 3.3], [1.0, 3.5], [2.6, 2.8]], 0.1), turns=-0.2),
        Mover("cone", "cone", [0.36, 0.36, 0.5], materials["cone"],
              _jitter(rng, [[2.2, 1.8], [1.0, 2.0], [-0.2, 1.8]], 0.1)),
        Mover("ball", "sphere", [0.36, 0.36, 0.36], materials["ball"],
              _jitter(rng, [[-2.2, -0.3], [0.0, -0.7], [2.0, -0.2]], 0.1), motion="roll"),
        Mover("monkey", "monkey", [0.46, 0.4, 0.36], materials["monkey"],
              _jitter(rng, [[1.9, 0.2], [0.4, 1.0], [-1.0, 0.6]], 0.1), motion="hover", height=0.72, turns=0.35),
        Mover("cylinder", "cylinder", [0.3, 0.3, 0.3], materials["cylinder"],
              _jitter(rng, [[-3.4, 0.9], [-2.2, 0.9], [-1.0, 1.3]], 0.1), turns=0.4),
    ]
    lights = [
        dict(type="AREA", size=[2.5, 1.5], energy=170.0, centre=[0.0, 1.0, 2.95]),
        dict(type="AREA", size=[1.0, 1.0], energy=50.0, centre=[2.5, -2.5, 2.95]),
    ]
    return Layout(
        name="room-b", room=[7.5, 8.5, 3.0], materials=materials, furniture=furniture, movers=movers, lights=lights,
        camera=_jitter(rng, [[-2.2, -2.9, 1.35], [0.0, -3.9, 1.45], [2.3, -3.0, 1.3]], 0.05),
        target=[[0.1, 1.3, 0.4], [0.3, 1.4, 0.45]],
        test_offset=(-0.45, 0.2, 0.35),
        walls=["wall_b", "wall_a", "wall_b", "wall_b"],
    )


def layout_room_c(rng: np.random.Generator) -> Layout:
    """A long hall with two benches and a pillar; a plain box slides out from behind a bench, a ball rolls towards
    the camera and a monkey head floats across, while the camera moves forward and pans."""
    materials = _room_materials(
        rng,
        _paint(rng, "wave", (0.6, 0.45, 0.3), (0.45, 0.32, 0.2), scale=1.5, distortion=6.0, grain=0.12),
        _paint(rng, "checker", (0.78, 0.76, 0.7), (0.7, 0.68, 0.62), scale=2.0, grain=0.1),
        _paint(rng, "noise", (0.72, 0.62, 0.5), (0.55, 0.45, 0.35), scale=4.0, grain=0.1),
    )
    materials.update(
        bench=_paint(rng, "wave", (0.4, 0.25, 0.15), (0.25, 0.15, 0.08), scale=4.0, roughness=0.5),
        pillar=_paint(rng, "brick", (0.7, 0.7, 0.7), (0.55, 0.55, 0.55), scale=6.0),
        box=_paint(rng, "flat", (0.9, 0.85, 0.75), grain=0.05, grain_scale=25.0),
        ball=_paint(rng, "checker", (0.1, 0.55, 0.3), (0.9, 0.9, 0.9), scale=8.0, roughness=0.3),
        monkey=_paint(rng, "voronoi", (0.55, 0.3, 0.65), (0.2, 0.1, 0.3), scale=10.0),
    )
    furniture = [
        dict(shape="box", size=[1.5, 0.45, 0.5], centre=[-1.6, 1.1, 0.25], yaw=0.05, material="bench"),
        dict(shape="box", size=[1.3, 0.45, 0.5], centre=[1.6, 2.6, 0.25], yaw=-0.1, material="bench"),
        dict(shape="box", size=[0.4, 0.4, 3.0], centre=[0.3, 3.4, 1.5], yaw=0.3, material="pillar"),
    ]
    movers = [
        Mover("box", "box", [0.4, 0.4, 0.4], materials["box"],
              _jitter(rng, [[-1.3, 2.0], [0.2, 1.9], [1.4, 1.6]], 0.1), turns=0.3),
        Mover("ball", "sphere", [0.4, 0.4, 0.4], materials["ball"],
              _jitter(rng, [[-1.6, 4.3], [-1.2, 2.8], [0.3, 0.3]], 0.1), motion="roll"),
        Mover("monkey", "monkey", [0.48, 0.42, 0.38], materials["monkey"],
              _jitter(rng, [[2.8, 0.8], [0.6, 2.4], [-2.6, 2.8]], 0.1), motion="hover", height=0.8, turns=0.5),
    ]
    lights = [
        dict(type="AREA", size=[1.5, 3.0], energy=170.0, centre=[0.0, 1.5, 2.95]),
        dict(type="AREA", size=[1.0, 1.0], energy=50.0, centre=[0.0, -3.0, 2.95]),
    ]
    return Layout(
        name="room-c", room=[7.0, 10.0, 3.0], materials=materials, furniture=furniture, movers=movers, lights=lights,
        camera=_jitter(rng, [[-0.3, -4.2, 1.45], [0.2, -3.4, 1.5], [0.6, -2.7, 1.6]], 0.05),
        target=[[-0.6, 2.0, 0.5], [0.5, 2.0, 0.5]],
        test_offset=(0.4, -0.2, 0.35),
        walls=["wall_a", "wall_b", "wall_b", "wall_a"],
    )


LAYOUTS: Dict[str, Callable[[np.random.Generator], Layout]] = {
    "room-a": layout_room_a, "room-b": layout_room_b, "room-c": layout_room_c,
}
SEEDS = {"room-a": 11, "room-b": 22, "room-c": 33}


# ------------------------------------------------------------------------------------------------ specification


def room_parts(layout: Layout) -> List[dict]:
    """Floor, ceiling and four walls as slabs 10 cm thick outside the room's inner box."""
    w, d, h = layout.room
    t = 0.1
    slabs = [
        ([w + 2 * t, d + 2 * t, t], [0, 0, -t / 2], "floor"),
        ([w + 2 * t, d + 2 * t, t], [0, 0, h + t / 2], "ceiling"),
        ([t, d, h], [-(w + t) / 2, 0, h / 2], layout.walls[0]),
        ([t, d, h], [(w + t) / 2, 0, h / 2], layout.walls[1]),
        ([w, t, h], [0, (d + t) / 2, h / 2], layout.walls[2]),
        ([w, t, h], [0, -(d + t) / 2, h / 2], layout.walls[3]),
    ]
    return [dict(shape="box", size=size, matrix=rigid(np.eye(3), centre).tolist(), material=m)
            for size, centre, m in slabs]


def furniture_parts(layout: Layout) -> List[dict]:
    return [
        dict(shape=f["shape"], size=f["size"], material=f["material"],
             matrix=rigid(rotation([0, 0, 1], f["yaw"]), f["centre"]).tolist())
        for f in layout.furniture
    ]


def camera_poses(layout: Layout) -> tuple[list, list]:
    """Training and test camera-to-world poses (Blender axes) of every frame."""
    train, test = [], []
    for v in range(NUM_FRAMES):
        p = v / (NUM_FRAMES - 1)
        eye, target = bezier(layout.camera, p), bezier(layout.target, p)
        pose = look_at(eye, target)
        train.append(pose)
        right, forward = pose[:3, 0], -pose[:3, 2]
        offset = layout.test_offset
        test_eye = eye + offset[0] * right + offset[1] * forward + offset[2] * np.array([0.0, 0.0, 1.0])
        test.append(look_at(test_eye, target))
    return train, test


def check_layout(layout: Layout) -> None:
    """Objects stay in the room, clear of each other and of the furniture, in every frame."""
    w, d, _ = layout.room
    for v in range(NUM_FRAMES):
        p = v / (NUM_FRAMES - 1)
        centres = [mover.matrix(p)[:3, 3] for mover in layout.movers]
        for i, (a, mover) in enumerate(zip(centres, layout.movers)):
            for b, other in zip(centres[i + 1 :], layout.movers[i + 1 :]):
                if np.linalg.norm(a[:2] - b[:2]) < 0.8 * (mover.radius + other.radius) and abs(a[2] - b[2]) < 0.5:
                    raise ValueError(f"{layout.name}: {mover.name} and {other.name} collide at frame {v}")
            for f in layout.furniture:
                half = np.asarray(f["size"][:2]) / 2 + 0.8 * mover.radius
                if (np.all(np.abs(a[:2] - np.asarray(f["centre"][:2])) < half)
                        and a[2] < f["centre"][2] + f["size"][2] / 2):
                    raise ValueError(f"{layout.name}: {mover.name} runs into furniture at frame {v}")
            if abs(a[0]) > w / 2 - mover.radius or abs(a[1]) > d / 2 - mover.radius:
                raise ValueError(f"{layout.name}: {mover.name} leaves the room at frame {v}")


def render_spec(layout: Layout, seed: int) -> dict:
    """Everything ``blender_render.py`` needs, as JSON."""
    check_layout(layout)
    train, test = camera_poses(layout)
    objects = []
    for mover in layout.movers:
        matrices = [mover.matrix(v / (NUM_FRAMES - 1)).tolist() for v in range(NUM_FRAMES)]
        objects.append(dict(name=mover.name, shape=mover.shape, size=list(mover.size), material=mover.name,
                            matrices=matrices))
    lights = [
        dict(type=light["type"], size=light["size"], energy=light["energy"],
             matrix=rigid(np.eye(3), light["centre"]).tolist())
        for light in layout.lights
    ]
    views = [dict(name=f"train_{v:03d}", frame=v, camera=pose.tolist()) for v, pose in enumerate(train)]
    views += [dict(name=f"test_{v:03d}", frame=v, camera=pose.tolist()) for v, pose in enumerate(test)]
    materials = {name: m for name, m in layout.materials.items()}
    materials.update({mover.name: mover.material for mover in layout.movers})
    return dict(
        version=SPEC_VERSION, name=layout.name, seed=seed, resolution=[WIDTH, HEIGHT], fx=FOCAL,
        rgb_samples=RGB_SAMPLES, materials=materials, background=room_parts(layout) + furniture_parts(layout),
        objects=objects, lights=lights, views=views, room=list(layout.room),
    )


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ rendering


def blender_python() -> str:
    """A Python with bpy: this one when it has it (``pip install -e '.[blender]'``)."""
    probe = subprocess.run([sys.executable, "-c", "import bpy"], capture_output=True)
    if probe.returncode != 0:
        raise SystemExit(
            "Rendering the indoor benchmark scenes needs Blender as a Python module: pip install -e '.[blender]' "
            "(the bpy package, Python 3.11)."
        )
    return sys.executable


def render(spec: dict, raw: Path, views: Optional[List[str]] = None, seed: Optional[int] = None, log=print) -> float:
    """Run the Blender stage into ``raw``; returns its wall-clock seconds."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "spec.json").write_text(json.dumps(spec))
    args = [blender_python(), str(REPO / "benchmarks" / "indoor" / "blender_render.py"), str(raw / "spec.json"),
            str(raw)]
    if views:
        args += ["--views", *views]
    if seed is not None:
        args += ["--seed", str(seed)]
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in process.stdout:
        if line.startswith("rendered "):
            log(f"{spec['name']}: {line.strip()}")
        last = line
    if process.wait() != 0:
        raise RuntimeError(f"Blender failed on {spec['name']}: {last.strip()}")
    return time.perf_counter() - start


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(-10 * np.log10(max(mse, 1e-12)))


# ------------------------------------------------------------------------------------------------ export


@dataclass
class RawView:
    rgb: np.ndarray
    amodal: np.ndarray
    """[K, H, W] z-depth of each object alone, metres (inf where missed)."""

    @property
    def depth(self) -> np.ndarray:
        return self.amodal.min(0)

    @property
    def labels(self) -> np.ndarray:
        return self.amodal.argmin(0)


def load_raw(raw: Path, name: str) -> RawView:
    rgb = np.asarray(Image.open(raw / f"{name}.png").convert("RGB"))
    return RawView(rgb, np.load(raw / f"{name}_depth.npy"))


def object_to_world(spec: dict, k: int, v: int) -> np.ndarray:
    """Pose of object k (0: the room, whose frame is the world) at frame v, metres, Blender world."""
    return np.eye(4) if k == 0 else np.asarray(spec["objects"][k - 1]["matrices"][v])


def camera_to_object(spec: dict, k: int, v: int, camera: np.ndarray, unit: float, origin: np.ndarray) -> np.ndarray:
    """P_k: camera coordinates in object k's units to object k's coordinates (own unit ``unit`` metres, origin).
    Blender's camera axes are the scene format's (x right, y up, looking along -z), so its poses carry over."""
    relative = np.linalg.inv(object_to_world(spec, k, v)) @ camera
    relative[:3, 3] = relative[:3, 3] / unit + origin
    return relative


def pixel_points(depth: np.ndarray) -> np.ndarray:
    """[H, W, 3] camera-frame points (Blender camera axes, metres) of a z-depth map."""
    u, v = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    x = (u - WIDTH / 2) / FOCAL
    y = -(v - HEIGHT / 2) / FOCAL
    return np.stack([x * depth, y * depth, -depth], -1)


def covisibility(
    spec: dict, test: RawView, test_camera: np.ndarray, frame: int, train: List[RawView], cameras
) -> np.ndarray:
    """[H, W] test pixels whose surface point at least ``COVISIBLE_FRAMES`` training frames show."""
    labels, depth = test.labels, test.depth
    points = pixel_points(np.where(np.isfinite(depth), depth, 1.0)).reshape(-1, 3)
    world = points @ test_camera[:3, :3].T + test_camera[:3, 3]
    seen = np.zeros(len(world), dtype=np.int64)
    flat_labels = labels.reshape(-1)
    for k in range(len(spec["objects"]) + 1):
        mine = (flat_labels == k) & np.isfinite(depth.reshape(-1))
        local = (world[mine] - object_to_world(spec, k, frame)[:3, 3]) @ object_to_world(spec, k, frame)[:3, :3]
        for u, (view, camera) in enumerate(zip(train, cameras)):
            moved = local @ object_to_world(spec, k, u)[:3, :3].T + object_to_world(spec, k, u)[:3, 3]
            in_camera = (moved - camera[:3, 3]) @ camera[:3, :3]
            z = -in_camera[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                col = np.floor(WIDTH / 2 + FOCAL * in_camera[:, 0] / z).astype(np.int64)
                row = np.floor(HEIGHT / 2 - FOCAL * in_camera[:, 1] / z).astype(np.int64)
            inside = (z > 0) & (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
            hit = np.zeros(len(z), dtype=bool)
            r, c = row[inside], col[inside]
            hit[inside] = (view.labels[r, c] == k) & (
                np.abs(view.depth[r, c] - z[inside]) < COVISIBLE_DEPTH_TOLERANCE * z[inside]
            )
            seen[np.flatnonzero(mine)[hit]] += 1
    return (seen >= COVISIBLE_FRAMES).reshape(HEIGHT, WIDTH)


def export(spec: dict, raw: Path, destination: Path, seed: int, log=print) -> Scene:
    """Write the OSN scene of a rendered spec: per-object random units and origins, exact poses, keypoints with depth
    noise, test views with co-visibility masks, amodal depth of the video."""
    rng = np.random.default_rng([seed, 7])
    names = ["background"] + [o["name"] for o in spec["objects"]]
    num_objects = len(names)
    units = np.exp(rng.uniform(*np.log(UNIT_RANGE), size=num_objects))
    origins = rng.normal(0.0, 1.0, size=(num_objects, 3))
    info = json.loads((raw / "render_info.json").read_text())
    train = [load_raw(raw, f"train_{v:03d}") for v in range(NUM_FRAMES)]
    cameras = [np.asarray(view["camera"]) for view in spec["views"] if view["name"].startswith("train")]
    test_cameras = [np.asarray(view["camera"]) for view in spec["views"] if view["name"].startswith("test")]
    with staged_directory(destination) as root:
        frames, keypoints, poses = [], [], np.zeros((num_objects, NUM_FRAMES, 4, 4))
        for v, view in enumerate(train):
            stem = f"{v:05d}"
            write_rgb(root / "images" / f"{stem}.png", view.rgb)
            write_mask(root / "masks" / f"{stem}.png", view.labels)
            write_depth(root / "depth" / f"{stem}.npy", view.depth / units[0])
            frames.append(Frame(image=f"images/{stem}.png", mask=f"masks/{stem}.png", time=v / FPS,
                                depth=f"depth/{stem}.npy"))
            for k in range(num_objects):
                poses[k, v] = camera_to_object(spec, k, v, cameras[v], units[k], origins[k])
            keypoints.append(frame_keypoints(view, v, units, rng))
        test_views = []
        for v, view in enumerate(load_raw(raw, f"test_{v:03d}") for v in range(NUM_FRAMES)):
            stem = f"test_{v:05d}"
            write_rgb(root / "images" / f"{stem}.png", view.rgb)
            write_mask(root / "masks" / f"{stem}.png", view.labels)
            write_depth(root / "depth" / f"{stem}.npy", view.depth / units[0])
            covisible = covisibility(spec, view, test_cameras[v], v, train, cameras)
            write_mask(root / "covisibility" / f"{stem}.png", covisible.astype(np.uint8) * 255)
            pose = camera_to_object(spec, 0, v, test_cameras[v], units[0], origins[0])
            test_views.append(TestView(image=f"images/{stem}.png", time=v / FPS, camera_to_background=pose,
                                       mask=f"masks/{stem}.png", depth=f"depth/{stem}.npy",
                                       covisibility=f"covisibility/{stem}.png"))
            if v % 10 == 9:
                log(f"{spec['name']}: exported test view {v + 1}/{NUM_FRAMES}")
        write_amodal_depth(root / "ground_truth" / "amodal_depth.npy",
                           np.stack([t.amodal for t in train], axis=1) / units[0])
        scene = Scene(
            root=root,
            camera=PinholeCamera(width=WIDTH, height=HEIGHT, fx=FOCAL, fy=FOCAL, cx=WIDTH / 2, cy=HEIGHT / 2),
            frames=frames,
            objects=[SceneObject(name, *object_box(spec, k, info, units[k], origins[k]))
                     for k, name in enumerate(names)],
            camera_to_object=poses,
            registered=np.ones((num_objects, NUM_FRAMES), dtype=bool),
            keypoints=concatenate(keypoints),
            mask_ignore_label=255,
            evaluation=Evaluation(test_views=test_views, relative_scales=units / units[0],
                                  amodal_depth="ground_truth/amodal_depth.npy"),
            provenance={"tool": "benchmarks/indoor_scenes.py", "spec": spec["name"], "spec_hash": spec_hash(spec),
                        "seed": seed, "units_metres": units.tolist(), "render_seconds": info["total_seconds"]},
        )
        write_scene_metadata(scene)
        validate_scene(scene)
    scene.root = destination
    return scene


def object_box(spec: dict, k: int, info: dict, unit: float, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object k's box in its own coordinates: its mesh's bounds (the room's inner box for the background) + margin."""
    if k == 0:
        w, d, h = spec["room"]
        low, high = np.array([-w / 2, -d / 2, 0.0]), np.array([w / 2, d / 2, h])
    else:
        low, high = (np.asarray(b) for b in info["bounds"][k - 1])
    margin = BBOX_MARGIN * (high - low)
    return (low - margin) / unit + origin, (high + margin) / unit + origin


def frame_keypoints(view: RawView, frame: int, units: np.ndarray, rng: np.random.Generator) -> Keypoints:
    """Keypoints of every object visible in a frame at pixel centres, depths in own units with noise."""
    strength = texture_strength(view.rgb.astype(np.float32) / 255)
    labels, depth = view.labels, view.depth
    per_object = [
        keypoint_pixels(labels, strength, k, KEYPOINTS["background" if k == 0 else "object"], rng, jitter=0.0)
        for k in range(len(units))
    ]
    object_id = np.concatenate([np.full(len(uv), k) for k, uv in enumerate(per_object)]).astype(np.int64)
    uv = np.concatenate(per_object)
    rows, cols = (uv[:, 1] - 0.5).astype(int), (uv[:, 0] - 0.5).astype(int)
    kp_depth, weight = noisy_depths(depth[rows, cols] / units[object_id], KEYPOINT_DEPTH_NOISE, rng)
    return Keypoints(object_id=object_id, frame=np.full(len(uv), frame), uv=uv, depth=kp_depth, weight=weight)


def concatenate(parts: List[Keypoints]) -> Keypoints:
    return Keypoints(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("object_id", "frame", "uv", "depth", "weight")))


# ------------------------------------------------------------------------------------------------ entry point


def cache_dir() -> Path:
    return Path(os.environ.get("OSN_CACHE_DIR", "~/.cache/osn-nerfstudio")).expanduser() / "benchmarks" / "indoor"


def ensure_scene(name: str, cache: Path, log=print) -> Path:
    """The cached scene ``name`` (rendered and exported on first use, and again when its spec changed)."""
    layout = LAYOUTS[name](np.random.default_rng(SEEDS[name]))
    spec = render_spec(layout, SEEDS[name])
    key = spec_hash(spec)
    home = cache / name
    scene_dir, raw = home / "scene", home / "raw"
    if ((home / "spec_hash").is_file() and (home / "spec_hash").read_text() == key
            and (scene_dir / "scene.json").is_file()):
        return scene_dir
    if not ((raw / "render_info.json").is_file() and (raw / "spec_hash").is_file()
            and (raw / "spec_hash").read_text() == key):
        shutil.rmtree(raw, ignore_errors=True)
        seconds = render(spec, raw, log=log)
        (raw / "spec_hash").write_text(key)
        log(f"{name}: rendered in {seconds / 60:.1f} min")
    shutil.rmtree(scene_dir, ignore_errors=True)
    export(spec, raw, scene_dir, SEEDS[name], log=log)
    (home / "spec_hash").write_text(key)
    return scene_dir


def summary(scene_dir: Path) -> str:
    """Visibility and occlusions of a scene, from its ground truth."""
    from osn_nerfstudio.data.ground_truth import occlusion_counts
    from osn_nerfstudio.data.validation import load_scene

    scene = load_scene(scene_dir, check_files=False)
    visible = np.array([[np.any(scene.load_mask(v) == k) for v in range(scene.num_frames)]
                        for k in range(scene.num_objects)])
    counts = occlusion_counts(scene)
    names = [o.name for o in scene.objects]
    lines = [f"{scene_dir}: render {scene.provenance['render_seconds'] / 60:.1f} min; units (m) "
             + ", ".join(f"{n} {u:.2f}" for n, u in zip(names, scene.provenance["units_metres"]))]
    lines.append("| object | visible frames | hides (pixels over the video) |")
    lines.append("|---|---|---|")
    for k, name in enumerate(names):
        hides = ", ".join(f"{names[j]} {counts[k, j]}" for j in range(1, len(names)) if j != k and counts[k, j])
        lines.append(f"| {name} | {int(visible[k].sum())}/{scene.num_frames} | {hides or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: $OSN_CACHE_DIR/benchmarks/indoor)")
    parser.add_argument("--check-noise", action="store_true", help="render frame 0 with another seed and compare")
    args = parser.parse_args()
    cache = args.cache or cache_dir()
    for name in args.scenes:
        scene_dir = ensure_scene(name, cache)
        print(summary(scene_dir))
        if args.check_noise:
            layout = LAYOUTS[name](np.random.default_rng(SEEDS[name]))
            spec = render_spec(layout, SEEDS[name])
            again = cache / name / "noise-check"
            render(spec, again, views=["train_000"], seed=SEEDS[name] + 1000)
            first = load_raw(cache / name / "raw", "train_000").rgb
            second = load_raw(again, "train_000").rgb
            print(f"{name}: frame 0 rendered with two Cycles seeds agrees to {psnr(first, second):.2f} dB PSNR")


if __name__ == "__main__":
    main()
