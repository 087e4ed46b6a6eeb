"""Object field backbones on this machine: training throughput and image quality per wall-clock second.

    python benchmarks/field_backbones.py [--seconds 60] [--backbones grid kplanes hash] [--threads 1]

1. Throughput: forward + backward samples/s of ObjectFields with K objects and M samples per object.
2. Quality: one textured solid (a sphere and a box with a smooth colour field and a fine checker) inside
   the unit box, seen by pinhole cameras on a sphere around it. Each backbone is trained by volume
   rendering stratified samples inside the box for the same wall-clock budget, then scored by PSNR on
   held-out cameras (over the pixels whose rays meet the box; the rest is background either way).
Backbones train in turns of a few seconds, so a machine shared with other work slows them alike; the
load average is printed with the results to judge them by.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
import tyro
from jaxtyping import Float
from torch import Tensor

from machine import load_average, machine_info
from osn_nerfstudio.fields.object_fields import ObjectFields, ObjectFieldsConfig

Backbone = Literal["grid", "hash", "kplanes"]

LEARNING_RATES: Dict[str, Tuple[float, float]] = {
    "grid": (5e-2, 1e-2),
    "hash": (3e-2, 1e-2),
    "kplanes": (3e-2, 1e-2),
}
"""(feature encoding, MLP heads) Adam learning rates per backbone, each the best of a few tried on this scene
(grid: 3e-2 to 1e-1 alike; hash and kplanes: 3e-2 beat nerfstudio's 1e-2 within a minute)."""

SPHERE_CENTRE = (0.37, 0.5, 0.5)
SPHERE_RADIUS = 0.33
BLOCK_MIN = (0.5, 0.12, 0.25)
BLOCK_MAX = (0.88, 0.72, 0.75)
CHECKER_CELLS = 12
"""Checker cells per box side: about 5 px per cell at the benchmark's image size."""
BACKGROUND = 1.0


@dataclass
class BenchmarkArgs:
    """Object field backbone benchmark."""

    seconds: float = 60.0
    """Training wall-clock budget per backbone."""
    backbones: Tuple[Backbone, ...] = ("grid", "kplanes", "hash")
    """Backbones to compare (torch implementation)."""
    throughput_objects: int = 4
    """Objects K in the throughput measurement."""
    throughput_samples: int = 16384
    """Samples M per object in the throughput measurement."""
    image_size: int = 96
    """Side of the square training and test images, in pixels."""
    train_cameras: int = 48
    """Training cameras, spread evenly over the viewing sphere."""
    test_cameras: int = 8
    """Held-out cameras at random positions on the viewing sphere."""
    rays_per_step: int = 1024
    """Training rays per Adam step."""
    samples_per_ray: int = 48
    """Stratified samples per ray inside the unit box."""
    seed: int = 0
    """Seed for cameras, initialisation and ray batches."""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice). Where other work shares the cores, 1 thread avoids the
    OpenMP stalls that can slow a 2-thread run twentyfold."""


# ---------------------------------------------------------------- analytic scene


def ray_box(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], low: Tensor, high: Tensor
) -> Tuple[Float[Tensor, " R"], Float[Tensor, " R"]]:
    """Entry and exit distances of rays through an axis-aligned box (entry > exit where they miss)."""
    inverse = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t_low, t_high = (low - origins) * inverse, (high - origins) * inverse
    t_near = torch.minimum(t_low, t_high).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t_low, t_high).amin(dim=-1)
    return t_near, t_far


def ray_sphere(origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"]) -> Float[Tensor, " R"]:
    """Distance to the first sphere hit, inf where the ray misses (unit directions)."""
    offset = origins - torch.tensor(SPHERE_CENTRE)
    half_b = (offset * directions).sum(-1)
    discriminant = half_b**2 - (offset.square().sum(-1) - SPHERE_RADIUS**2)
    t_hit = -half_b - discriminant.clamp_min(0.0).sqrt()
    return torch.where((discriminant > 0) & (t_hit > 0), t_hit, torch.full_like(t_hit, math.inf))


def surface_colour(points: Float[Tensor, "R 3"]) -> Float[Tensor, "R 3"]:
    """Smooth 3D colour field darkened on alternate cells of a fine 3D checker."""
    mixing = torch.tensor([[1.0, 0.3, -0.5], [-0.4, 1.0, 0.6], [0.5, -0.6, 1.0]])
    smooth = 0.5 + 0.4 * torch.sin(2.0 * math.pi * points @ mixing + torch.tensor([0.0, 2.0, 4.0]))
    checker = torch.floor(points * CHECKER_CELLS).sum(-1).remainder(2.0)
    return smooth * (1.0 - 0.35 * checker[:, None])


def cast_rays(origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"]) -> Float[Tensor, "R 3"]:
    """Ground-truth colour: the first surface of the sphere-and-block solid, background elsewhere."""
    t_sphere = ray_sphere(origins, directions)
    t_near, t_far = ray_box(origins, directions, torch.tensor(BLOCK_MIN), torch.tensor(BLOCK_MAX))
    t_block = torch.where(t_near < t_far, t_near, torch.full_like(t_near, math.inf))
    t_hit = torch.minimum(t_sphere, t_block)
    hit = torch.isfinite(t_hit)
    points = origins + torch.where(hit, t_hit, torch.zeros_like(t_hit))[:, None] * directions
    return torch.where(hit[:, None], surface_colour(points), torch.full_like(points, BACKGROUND))


def look_at(eye: Float[Tensor, " 3"]) -> Float[Tensor, "3 3"]:
    """Camera-to-world rotation (OpenGL axes: x right, y up, looking along -z) facing the box centre."""
    forward = torch.nn.functional.normalize(0.5 - eye, dim=0)
    up = torch.tensor([0.0, 1.0, 0.0]) if forward[1].abs() < 0.95 else torch.tensor([1.0, 0.0, 0.0])
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    return torch.stack([right, torch.linalg.cross(right, forward), -forward], dim=1)


def camera_positions(count: int, generator: torch.Generator | None) -> Float[Tensor, "count 3"]:
    """Points on a sphere of radius 2 around the box centre: a Fibonacci spiral, or random with a generator."""
    if generator is None:
        z = 1.0 - (2.0 * torch.arange(count) + 1.0) / count
        azimuth = math.pi * (3.0 - math.sqrt(5.0)) * torch.arange(count)
        ring = (1.0 - z**2).sqrt()
        unit = torch.stack([ring * torch.cos(azimuth), z, ring * torch.sin(azimuth)], dim=-1)
    else:
        unit = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return 0.5 + 2.0 * unit


def camera_rays(eyes: Float[Tensor, "C 3"], size: int) -> Tuple[Float[Tensor, "C*P 3"], Float[Tensor, "C*P 3"]]:
    """Pixel-centre rays of square pinhole cameras whose field of view just holds the unit box."""
    focal = 0.5 * size / math.tan(math.radians(25.0))
    pixel = torch.arange(size, dtype=torch.float32) + 0.5
    rows, cols = torch.meshgrid(pixel, pixel, indexing="ij")
    local = torch.stack([(cols - size / 2) / focal, -(rows - size / 2) / focal, -torch.ones_like(rows)], dim=-1)
    local = torch.nn.functional.normalize(local.reshape(-1, 3), dim=-1)
    rotations = torch.stack([look_at(eye) for eye in eyes])
    directions = torch.einsum("cij,pj->cpi", rotations, local).reshape(-1, 3)
    origins = eyes[:, None, :].expand(-1, size * size, -1).reshape(-1, 3)
    return origins, directions


@dataclass
class RaySet:
    """Rays that meet the unit box, with their interval inside it and ground-truth colour."""

    origins: Float[Tensor, "R 3"]
    directions: Float[Tensor, "R 3"]
    near: Float[Tensor, " R"]
    far: Float[Tensor, " R"]
    rgb: Float[Tensor, "R 3"]


def box_rays(eyes: Float[Tensor, "C 3"], size: int) -> RaySet:
    origins, directions = camera_rays(eyes, size)
    near, far = ray_box(origins, directions, torch.zeros(3), torch.ones(3))
    inside = far > near
    origins, directions, near, far = origins[inside], directions[inside], near[inside], far[inside]
    return RaySet(origins, directions, near, far, cast_rays(origins, directions))


# ---------------------------------------------------------------- volume rendering


def render(
    fields: ObjectFields, rays: RaySet, index: Tensor, samples: int, generator: torch.Generator | None
) -> Float[Tensor, "R 3"]:
    """Alpha-composited colour of rays[index]: stratified samples with a generator, bin centres without."""
    near, far = rays.near[index, None], rays.far[index, None]
    if generator is None:
        offsets = torch.full((len(index), samples), 0.5)
    else:
        offsets = torch.rand(len(index), samples, generator=generator)
    spacing = (far - near) / samples
    distances = near + (torch.arange(samples) + offsets) * spacing
    points = rays.origins[index, None] + distances[..., None] * rays.directions[index, None]
    directions = rays.directions[index, None].expand_as(points)
    density, rgb = fields(points.clamp(0.0, 1.0).reshape(1, -1, 3), directions.reshape(1, -1, 3))
    alpha = 1.0 - torch.exp(-density.view(len(index), samples) * spacing)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
    weights = alpha * transmittance
    colour = (weights[..., None] * rgb.view(len(index), samples, 3)).sum(dim=1)
    return colour + (1.0 - weights.sum(dim=1, keepdim=True)) * BACKGROUND


@torch.no_grad()
def psnr(fields: ObjectFields, rays: RaySet, samples: int) -> float:
    errors = []
    for index in torch.arange(len(rays.near)).split(4096):
        errors.append((render(fields, rays, index, samples, None) - rays.rgb[index]).square())
    return -10.0 * math.log10(torch.cat(errors).mean().item())


# ---------------------------------------------------------------- measurements


def throughput(
    backbones: Tuple[str, ...], num_objects: int, num_samples: int, repeats: int = 7
) -> Dict[str, Tuple[int, float]]:
    """(parameters, forward + backward samples/s) per backbone.

    Backbones take turns, and the fastest pass counts: on a shared machine it is the best estimate of the
    cost of the work itself.
    """
    fields = {
        backbone: ObjectFields(num_objects, ObjectFieldsConfig(backbone=backbone, implementation="torch"))
        for backbone in backbones
    }
    points = torch.rand(num_objects, num_samples, 3, requires_grad=True)
    directions = torch.nn.functional.normalize(torch.randn(num_objects, num_samples, 3), dim=-1)
    durations: Dict[str, list] = {backbone: [] for backbone in backbones}
    for repeat in range(repeats + 1):
        for backbone, backbone_fields in fields.items():
            start = time.perf_counter()
            density, rgb = backbone_fields(points, directions)
            (density.mean() + rgb.mean()).backward()
            if repeat > 0:  # the first pass pays for allocations
                durations[backbone].append(time.perf_counter() - start)
    return {
        backbone: (
            sum(parameter.numel() for parameter in backbone_fields.parameters()),
            num_objects * num_samples / min(durations[backbone]),
        )
        for backbone, backbone_fields in fields.items()
    }


class Trainer:
    """One backbone fitting the scene; advanced in time slices so that all backbones share the machine's load."""

    def __init__(self, config: ObjectFieldsConfig, learning_rates: Tuple[float, float], args: BenchmarkArgs) -> None:
        torch.manual_seed(args.seed)
        self.args = args
        self.generator = torch.Generator().manual_seed(args.seed)
        self.fields = ObjectFields(1, config)
        groups = self.fields.param_groups()
        encoding_lr, heads_lr = learning_rates
        self.optimizer = torch.optim.Adam(
            [
                {"params": groups["object_encodings"], "lr": encoding_lr},
                {"params": groups["object_heads"], "lr": heads_lr},
            ],
            eps=1e-15,
        )
        self.steps = 0
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return self.seconds >= self.args.seconds

    def train_slice(self, train: RaySet, slice_seconds: float) -> None:
        """Adam steps for about ``slice_seconds`` (at least one), stopping at the budget."""
        start = time.perf_counter()
        while True:
            index = torch.randint(len(train.near), (self.args.rays_per_step,), generator=self.generator)
            prediction = render(self.fields, train, index, self.args.samples_per_ray, self.generator)
            loss = (prediction - train.rgb[index]).square().mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= slice_seconds or self.seconds + elapsed >= self.args.seconds:
                break
        self.seconds += elapsed


def train_all(trainers: Dict[str, Trainer], train: RaySet) -> None:
    """Every trainer run for its wall-clock budget, in turns of a few seconds each."""
    while not all(trainer.done for trainer in trainers.values()):
        for trainer in trainers.values():
            if not trainer.done:
                trainer.train_slice(train, slice_seconds=2.0)


def main(args: BenchmarkArgs) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(machine_info())
    generator = torch.Generator().manual_seed(args.seed)
    train = box_rays(camera_positions(args.train_cameras, None), args.image_size)
    test = box_rays(camera_positions(args.test_cameras, generator), args.image_size)
    print(
        f"scene: {args.train_cameras} training / {args.test_cameras} held-out cameras at {args.image_size} px, "
        f"{len(train.near)} / {len(test.near)} rays meet the box; {args.rays_per_step} rays x "
        f"{args.samples_per_ray} samples per step, {args.seconds:.0f} s per backbone"
    )
    load_before = load_average()
    measured = throughput(args.backbones, args.throughput_objects, args.throughput_samples)
    trainers = {
        backbone: Trainer(ObjectFieldsConfig(backbone=backbone, implementation="torch"), LEARNING_RATES[backbone], args)
        for backbone in args.backbones
    }
    train_all(trainers, train)
    print(f"load average (1/5/15 min): {load_before} before, {load_average()} after")
    print(
        f"\n| backbone | params (K={args.throughput_objects}) | fwd+bwd samples/s (K={args.throughput_objects}, "
        f"M={args.throughput_samples}) | steps in {args.seconds:.0f} s | s/step | held-out PSNR |"
    )
    print("|---|---|---|---|---|---|")
    for backbone, (parameters, samples_per_second) in measured.items():
        trainer = trainers[backbone]
        print(
            f"| {backbone} | {parameters / 1e6:.2f} M | {samples_per_second / 1e6:.3f} M | {trainer.steps} | "
            f"{trainer.seconds / trainer.steps:.3f} | {psnr(trainer.fields, test, args.samples_per_ray):.2f} dB |"
        )

if __name__ == "__main__":
    main(tyro.cli(BenchmarkArgs))
