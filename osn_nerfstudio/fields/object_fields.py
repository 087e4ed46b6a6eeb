"""Per-object scale-invariant radiance fields (docs/method.md).

Every object k has its own radiance field over its unit volume: sample points arrive normalised to
[0, 1]^3 inside the object's bounding box, directions are unit vectors in object coordinates. The K
fields share nothing but their architecture, so changing one object's parameters never changes another
object's output. Query all objects at once with the same number M of samples each (``forward``,
``density``), or one object on any number of samples (``object_forward``, ``object_density``).
With ``appearance_dim`` > 0 each object's colour also reads a learned code of the (fractional) frame: geometry is
shared by the whole video, appearance may follow its lighting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Literal, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import Encoding, HashEncoding, KPlanesEncoding, SHEncoding
from nerfstudio.field_components.mlp import MLP
from nerfstudio.utils.external import TCNN_EXISTS

from osn_nerfstudio.core.geometry import neighbouring_frames

TCNN_INSTALL_HINT = (
    "install it on a CUDA machine with "
    "`pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch`, "
    "or set the object fields' implementation to 'torch' (or 'auto', which picks torch when tcnn cannot run)"
)

CPU_ROWS_PER_HEAD_CALL = 4096
"""Samples per MLP head call on the CPU: a block's [rows, hidden_dim] activations stay in a core's cache
through the forward and backward pass (a third faster than one call on 40k samples; far fewer fresh pages)."""

MIN_POINTS_TO_SPLIT = 1024
"""Grid reads of at least this many points are split among the CPU threads (fewer points are not worth a thread)."""


MAX_LOG_DENSITY = 30.0
"""Largest log-density: e^30 is opaque over any interval a sampler produces, and far from float overflow."""


@dataclass
class ObjectFieldsConfig:
    """Architecture of the per-object radiance fields (one field per object, all alike)."""

    backbone: Literal["grid", "hash", "kplanes"] = "grid"
    """Spatial encoding: "grid" (dense grids, fastest on CPU), "hash" (Instant-NGP hash grids, fast with tcnn on
    CUDA) or "kplanes" (factorised planes); docs/method.md compares them."""
    implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """tinycudann kernels or pure torch; "auto" takes tcnn when it is importable and CUDA is available."""
    grid_resolutions: Tuple[int, ...] = (16, 32, 64)
    """Cells per side of each dense grid level ("grid" backbone, ``grid_sizing`` "fixed"; memory grows with the
    cube). With "footprint" sizing its length is the number of levels."""
    grid_sizing: Literal["fixed", "footprint"] = "fixed"
    """"fixed": every object gets ``grid_resolutions`` cubed; "footprint": each object's finest level has about one
    cell per ``grid_pixels_per_cell`` pixels its box spans on screen (docs/method.md)."""
    grid_pixels_per_cell: float = 2.0
    """Pixels of an object's box per cell of its finest grid level ("footprint" sizing)."""
    grid_max_cells: int = 1 << 22
    """Most cells in one object's finest level ("footprint" sizing; 4 features of float32 each)."""
    grid_min_resolution: int = 8
    """Fewest cells along any axis of any level ("footprint" sizing)."""
    grid_features: int = 4
    """Feature channels per dense grid level ("grid" backbone)."""
    grid_init_scale: float = 0.1
    """Dense grid features start uniform in [-scale, scale] ("grid" backbone)."""
    hash_levels: int = 12
    """Number of hash grid levels ("hash" backbone)."""
    hash_min_resolution: int = 16
    """Resolution of the coarsest hash grid level ("hash" backbone)."""
    hash_max_resolution: int = 256
    """Resolution of the finest hash grid level ("hash" backbone, "fixed" sizing; with "footprint" sizing each
    object's follows its pixel footprint)."""
    hash_log2_table_size: int = 17
    """log2 of the hash table entries per level and object ("hash" backbone)."""
    hash_features: int = 2
    """Features per hash grid level ("hash" backbone)."""
    plane_resolutions: Tuple[int, ...] = (32, 64, 128)
    """Resolution of each level's three planes ("kplanes" backbone)."""
    plane_features: int = 16
    """Feature channels per plane level, the product of its three planes' features ("kplanes" backbone)."""
    hidden_dim: int = 64
    """Width of the density and colour MLPs (16, 32, 64 or 128 use tcnn's fully fused MLP)."""
    geo_feat_dim: int = 15
    """Features passed from the density MLP to the colour MLP."""
    colour_layers: int = 2
    """Layers of the colour MLP (hidden layers + output layer)."""
    direction_levels: int = 3
    """Spherical-harmonics levels (1 to 4) encoding the view direction; 1 makes colour view-independent."""
    appearance_dim: int = 0
    """Length of each object's per-frame appearance code, an input of its colour MLP only (0: none): light that
    changes over the video, a turning object's shading or a moving shadow, without fog (docs/method.md)."""
    density_bias: float = -1.0
    """Added to the raw density before the exponential: the initial density is about exp(density_bias)
    per unit of box side, a faint fog that still passes gradients to every sample."""


def run_in_blocks(head: nn.Module, rows: Float[Tensor, "M D"]) -> Float[Tensor, "M O"]:
    """``head(rows)``, on the CPU in blocks of ``CPU_ROWS_PER_HEAD_CALL`` rows (one call elsewhere)."""
    if rows.device.type != "cpu" or len(rows) <= CPU_ROWS_PER_HEAD_CALL:
        return head(rows)
    return torch.cat([head(block) for block in rows.split(CPU_ROWS_PER_HEAD_CALL)])


def resolve_implementation(implementation: Literal["auto", "tcnn", "torch"]) -> Literal["tcnn", "torch"]:
    """The kernels to build with: "auto" means tcnn where it can run; an explicit "tcnn" that cannot run fails."""
    tcnn_runs = TCNN_EXISTS and torch.cuda.is_available()
    if implementation == "auto":
        return "tcnn" if tcnn_runs else "torch"
    if implementation == "tcnn" and not tcnn_runs:
        raise RuntimeError(
            "ObjectFieldsConfig.implementation='tcnn' needs tinycudann and a CUDA device "
            f"(tinycudann importable: {TCNN_EXISTS}, CUDA available: {torch.cuda.is_available()}); "
            + TCNN_INSTALL_HINT
            + "."
        )
    return implementation


def total_variation(grid: Tensor, spatial_dims: int) -> Tensor:
    """Mean squared difference between neighbouring cells along each of the last ``spatial_dims`` axes."""
    # mse_loss of shifted views fuses difference, square and mean: a third faster than diff().square().mean()
    return sum(
        F.mse_loss(grid.narrow(dim, 1, grid.shape[dim] - 1), grid.narrow(dim, 0, grid.shape[dim] - 1))
        for dim in range(grid.dim() - spatial_dims, grid.dim())
    )


@dataclass
class ObjectExtent:
    """What sizing an object's field needs: its box and how far the camera usually is, in its own units."""

    box_size: Tuple[float, float, float]
    """Extent of the object's box along x, y, z."""
    distance: float
    """Typical z-depth of the object from the camera (the median of its keypoints')."""


def footprint_resolutions(extent: ObjectExtent, focal: float, config: ObjectFieldsConfig) -> List[Tuple[int, int, int]]:
    """Cells along (x, y, z) of each grid level of an object sized by its pixel footprint ("footprint" sizing).

    The finest level has ``box_size * focal / distance / grid_pixels_per_cell`` cells along each axis (the box's
    extent in pixels at its typical distance, per cell), shrunk evenly to at most ``grid_max_cells``; each coarser
    level halves that; no axis gets fewer than ``grid_min_resolution``. A 10 m room seen from 5 m and a 20 cm ball
    seen from 2 m thus get grids as fine as the pixels that show them.
    """
    finest = [size * focal / extent.distance / config.grid_pixels_per_cell for size in extent.box_size]
    cells = math.prod(max(f, 1.0) for f in finest)
    if cells > config.grid_max_cells:
        finest = [f * (config.grid_max_cells / cells) ** (1 / 3) for f in finest]
    levels = len(config.grid_resolutions)
    return [
        tuple(max(config.grid_min_resolution, round(f / 2 ** (levels - 1 - level))) for f in finest)
        for level in range(levels)
    ]


class DenseGridEncoding(nn.Module):
    """Multi-resolution dense feature grids, one set per object, each object's levels of their own size.

    Level tensors are [C, D, H, W] with (W, H, D) cells along the object's (x, y, z): grid_sample reads a point
    (x, y, z) in [-1, 1] at (W, H, D), so x runs along the last axis. Trilinear interpolation keeps gradients to the
    sample positions.
    """

    def __init__(self, resolutions: Sequence[Sequence[Tuple[int, int, int]]], features: int, init_scale: float) -> None:
        """``resolutions[k][level]`` = cells along (x, y, z) of that level of object k; every object has as many."""
        super().__init__()
        self.features = features
        self.num_levels = len(resolutions[0])
        if any(len(levels) != self.num_levels for levels in resolutions):
            raise ValueError("every object needs the same number of grid levels")
        self.resolutions = [[tuple(int(n) for n in level) for level in levels] for levels in resolutions]
        self.levels = nn.ParameterList(
            nn.Parameter(torch.empty(features, z, y, x).uniform_(-init_scale, init_scale))
            for levels in self.resolutions
            for x, y, z in levels
        )

    def get_out_dim(self) -> int:
        return self.features * self.num_levels

    def object_levels(self, k: int) -> List[nn.Parameter]:
        return list(self.levels[k * self.num_levels : (k + 1) * self.num_levels])

    def forward(self, points: Float[Tensor, "K M 3"]) -> Float[Tensor, "K M F"]:
        return torch.stack([self.object_features(k, object_points) for k, object_points in enumerate(points)])

    def object_features(self, k: int, points: Float[Tensor, "M 3"]) -> Float[Tensor, "M F"]:
        """Features of object k's grids at any number of points.

        On the CPU grid_sample gives each batch entry to one thread, so a large read is split into one entry of
        equal size per thread, each reading the same grids.
        """
        parts = torch.get_num_threads() if points.device.type == "cpu" and len(points) >= MIN_POINTS_TO_SPLIT else 1
        padding = (-len(points)) % parts
        padded = torch.cat([points, points[-1:].expand(padding, 3)]) if padding else points
        levels = [level[None].expand(parts, -1, -1, -1, -1) for level in self.object_levels(k)]
        return self.read(levels, padded.view(parts, -1, 3)).reshape(len(padded), -1)[: len(points)]

    @staticmethod
    def read(levels: List[Tensor], points: Float[Tensor, "N M 3"]) -> Float[Tensor, "N M F"]:
        """Trilinear features of levels (each [N, C, D, H, W]) at M points per batch entry, levels concatenated."""
        num_batches, num_samples, _ = points.shape
        coords = (points * 2.0 - 1.0).view(num_batches, 1, 1, num_samples, 3)
        features = [
            F.grid_sample(level, coords, mode="bilinear", padding_mode="border", align_corners=True)
            for level in levels
        ]
        return torch.cat(features, dim=1).view(num_batches, -1, num_samples).transpose(1, 2)

    def regularisation(self) -> Tensor:
        return sum(total_variation(level, spatial_dims=3) for level in self.levels)


class PerObjectEncoding(nn.Module):
    """nerfstudio encodings, one list per object whose features are concatenated, evaluated object by object."""

    def __init__(self, encodings: List[List[Encoding]], centred_input: bool) -> None:
        super().__init__()
        self.encodings = nn.ModuleList(nn.ModuleList(object_encodings) for object_encodings in encodings)
        self.centred_input = centred_input
        """True for encodings that read coordinates in [-1, 1] rather than [0, 1]."""

    def get_out_dim(self) -> int:
        return sum(encoding.get_out_dim() for encoding in self.encodings[0])

    def forward(self, points: Float[Tensor, "K M 3"]) -> Float[Tensor, "K M F"]:
        coords = points * 2.0 - 1.0 if self.centred_input else points
        return torch.stack(
            [
                torch.cat([encoding(object_coords) for encoding in object_encodings], dim=-1).float()
                for object_encodings, object_coords in zip(self.encodings, coords)
            ]
        )

    def object_features(self, k: int, points: Float[Tensor, "M 3"]) -> Float[Tensor, "M F"]:
        coords = points * 2.0 - 1.0 if self.centred_input else points
        return torch.cat([encoding(coords) for encoding in self.encodings[k]], dim=-1).float()

    def regularisation(self) -> Tensor:
        """Total variation of every plane (K-Planes' spatial smoothness); zero for encodings without planes."""
        planes = [
            plane
            for encoding in self.encodings.modules()
            if isinstance(encoding, KPlanesEncoding)
            for plane in encoding.plane_coefs
        ]
        zero = torch.zeros((), device=next(self.parameters()).device)
        return sum((total_variation(plane, spatial_dims=2) for plane in planes), zero)


def grid_resolutions(
    num_objects: int, config: ObjectFieldsConfig, extents: Optional[Sequence[ObjectExtent]], focal: Optional[float]
) -> List[List[Tuple[int, int, int]]]:
    """Cells along (x, y, z) of every grid level of every object, by ``config.grid_sizing``."""
    if config.grid_sizing == "fixed":
        return [[(r, r, r) for r in config.grid_resolutions] for _ in range(num_objects)]
    if extents is None or focal is None or len(extents) != num_objects:
        raise ValueError("footprint grid sizing needs every object's extent and the camera's focal length")
    return [footprint_resolutions(extent, focal, config) for extent in extents]


def hash_max_resolutions(
    num_objects: int, config: ObjectFieldsConfig, extents: Optional[Sequence[ObjectExtent]], focal: Optional[float]
) -> List[int]:
    """Finest hash grid resolution of every object: ``hash_max_resolution``, or with "footprint" sizing the finest
    grid level's largest axis (``footprint_resolutions`` without its cell budget), at least twice the coarsest."""
    if config.grid_sizing == "fixed":
        return [config.hash_max_resolution] * num_objects
    resolutions = grid_resolutions(num_objects, replace(config, grid_max_cells=1 << 62), extents, focal)
    return [max(2 * config.hash_min_resolution, max(levels[-1])) for levels in resolutions]


def build_encoding(
    num_objects: int,
    config: ObjectFieldsConfig,
    implementation: str,
    extents: Optional[Sequence[ObjectExtent]] = None,
    focal: Optional[float] = None,
) -> nn.Module:
    """The spatial encoding of ``config.backbone`` for ``num_objects`` independent objects."""
    if config.backbone == "grid":
        resolutions = grid_resolutions(num_objects, config, extents, focal)
        return DenseGridEncoding(resolutions, config.grid_features, config.grid_init_scale)
    if config.backbone == "hash":
        hash_encodings = [
            [
                HashEncoding(
                    num_levels=config.hash_levels,
                    min_res=config.hash_min_resolution,
                    max_res=max_resolution,
                    log2_hashmap_size=config.hash_log2_table_size,
                    features_per_level=config.hash_features,
                    implementation=implementation,
                )
            ]
            for max_resolution in hash_max_resolutions(num_objects, config, extents, focal)
        ]
        return PerObjectEncoding(hash_encodings, centred_input=False)
    if config.backbone == "kplanes":
        plane_encodings = [
            [KPlanesEncoding((r, r, r), num_components=config.plane_features) for r in config.plane_resolutions]
            for _ in range(num_objects)
        ]
        return PerObjectEncoding(plane_encodings, centred_input=True)
    raise ValueError(f"unknown object field backbone {config.backbone!r}; choose 'grid', 'hash' or 'kplanes'")


class ObjectRadianceFields(Protocol):
    """The interface of per-object fields that the OSN model's sampler and losses use (:class:`ObjectFields`
    implements it; so do the tests' analytic fields). Points are in each object's unit box [0, 1]^3."""

    def object_density(self, k: int, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs"]:
        """Density of object k (per unit of its own length) at points of its unit box."""

    def object_forward(
        self,
        k: int,
        points: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        frames: Optional[Float[Tensor, "*bs"]] = None,
    ) -> Tuple[Float[Tensor, "*bs"], Float[Tensor, "*bs 3"]]:
        """Density and colour of object k at points of its unit box, seen along ``directions`` (broadcast) at the
        fractional video ``frames`` (broadcast; None: frame 0)."""

    def regularisation(self) -> Float[Tensor, ""]:
        """The fields' own regulariser (0 where they have none)."""


class ObjectFields(nn.Module, ObjectRadianceFields):
    """K independent radiance fields, each over its object's unit box: density and view-dependent colour."""

    def __init__(
        self,
        num_objects: int,
        config: ObjectFieldsConfig,
        extents: Optional[Sequence[ObjectExtent]] = None,
        focal: Optional[float] = None,
        num_frames: int = 1,
    ) -> None:
        """``extents`` and ``focal`` (pixels) size each object's grids when ``config.grid_sizing`` is "footprint";
        ``num_frames`` is the video's length (one appearance code per object and frame)."""
        super().__init__()
        self.num_objects = num_objects
        self.config = config
        self.implementation = resolve_implementation(config.implementation)
        self.encoding = build_encoding(num_objects, config, self.implementation, extents, focal)
        self.direction_encoding = SHEncoding(levels=config.direction_levels, implementation=self.implementation)
        self.density_heads = nn.ModuleList(
            MLP(
                in_dim=self.encoding.get_out_dim(),
                num_layers=2,
                layer_width=config.hidden_dim,
                out_dim=1 + config.geo_feat_dim,
                implementation=self.implementation,
            )
            for _ in range(num_objects)
        )
        # zero codes: every frame starts alike
        self.appearance = (
            nn.Parameter(torch.zeros(num_objects, num_frames, config.appearance_dim))
            if config.appearance_dim > 0
            else None
        )
        self.colour_heads = nn.ModuleList(
            MLP(
                in_dim=config.geo_feat_dim + self.direction_encoding.get_out_dim() + config.appearance_dim,
                num_layers=config.colour_layers,
                layer_width=config.hidden_dim,
                out_dim=3,
                out_activation=nn.Sigmoid(),
                implementation=self.implementation,
            )
            for _ in range(num_objects)
        )

    def geometry(self, points: Float[Tensor, "K M 3"]) -> Tuple[Float[Tensor, "K M"], Float[Tensor, "K M G"]]:
        """Density and the geometry features that condition colour."""
        features = self.encoding(points)
        raw = torch.stack([head(features_k).float() for head, features_k in zip(self.density_heads, features)])
        return self.activate_density(raw[..., 0]), raw[..., 1:]

    def activate_density(self, raw: Tensor) -> Tensor:
        """Non-negative, finite density from the density MLP's first output."""
        # exp overflows to inf past ~88, and inf density on a zero-length interval gives NaN opacity. The cap
        # passes gradients straight through: with a plain clamp a field pushed past it (by a burst of large
        # gradients) gets none back and stays opaque everywhere for good
        log_density = raw + self.config.density_bias
        return trunc_exp(log_density + (log_density.clamp(max=MAX_LOG_DENSITY) - log_density).detach())

    def density(self, points: Float[Tensor, "K M 3"]) -> Float[Tensor, "K M"]:
        """Density alone (no colour MLP), for coarse sampling passes."""
        return self.geometry(points)[0]

    def forward(
        self,
        points: Float[Tensor, "K M 3"],
        directions: Float[Tensor, "K M 3"],
        frames: Optional[Float[Tensor, "K M"]] = None,
    ) -> Tuple[Float[Tensor, "K M"], Float[Tensor, "K M 3"]]:
        """Density (>= 0) and rgb (in [0, 1]) of every object's samples (at fractional video ``frames``)."""
        density, geo_features = self.geometry(points)
        colour_input = [geo_features, self.encode_directions(directions).to(geo_features.dtype)]
        if self.config.appearance_dim > 0:
            frames = torch.zeros_like(density) if frames is None else frames.expand_as(density)
            codes = [self.appearance_codes(k, frames[k]) for k in range(self.num_objects)]
            colour_input.append(torch.stack(codes).to(geo_features.dtype))
        colour_input = torch.cat(colour_input, dim=-1)
        rgb = torch.stack([head(object_input).float() for head, object_input in zip(self.colour_heads, colour_input)])
        return density, rgb

    def object_geometry(
        self, k: int, points: Float[Tensor, "*bs 3"]
    ) -> Tuple[Float[Tensor, "*bs"], Float[Tensor, "*bs G"]]:
        """``geometry`` for object k alone, on any number of points."""
        shape = points.shape[:-1]
        raw = run_in_blocks(self.density_heads[k], self.encoding.object_features(k, points.reshape(-1, 3))).float()
        # one split, whose backward joins the two gradients, rather than two slices that each zero-fill one
        raw_density, geo_features = raw.split([1, raw.shape[-1] - 1], dim=-1)
        return self.activate_density(raw_density).reshape(shape), geo_features.reshape(*shape, -1)

    def object_density(self, k: int, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs"]:
        """Density of object k alone, for coarse sampling passes."""
        return self.object_geometry(k, points)[0]

    def object_forward(
        self,
        k: int,
        points: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        frames: Optional[Float[Tensor, "*bs"]] = None,
    ) -> Tuple[Float[Tensor, "*bs"], Float[Tensor, "*bs 3"]]:
        """``forward`` for object k alone: the model evaluates each object only on the rays that meet its box.

        ``directions`` and ``frames`` may also broadcast against ``points``, e.g. one per ray ([R, 1, 3], [R, 1])
        for samples [R, N, 3]: each is then encoded once rather than once per sample.
        """
        density, geo_features = self.object_geometry(k, points)
        encoded = self.encode_directions(directions).to(geo_features.dtype)
        colour_input = [geo_features, encoded.expand(*geo_features.shape[:-1], -1)]
        if self.config.appearance_dim > 0:
            codes = self.appearance_codes(k, torch.zeros_like(density) if frames is None else frames)
            colour_input.append(codes.to(geo_features.dtype).expand(*geo_features.shape[:-1], -1))
        colour_input = torch.cat(colour_input, dim=-1)
        shape = points.shape[:-1]
        rgb = run_in_blocks(self.colour_heads[k], colour_input.reshape(-1, colour_input.shape[-1])).float()
        return density, rgb.reshape(*shape, 3)

    def appearance_codes(self, k: int, frames: Float[Tensor, "*bs"]) -> Float[Tensor, "*bs A"]:
        """Object k's appearance code at fractional ``frames``: linear between the two nearest frames' codes,
        the first or last frame's outside the video."""
        codes = self.appearance[k]
        before, after, weight = neighbouring_frames(frames.float(), codes.shape[0])
        return torch.lerp(codes[before], codes[after], weight[..., None])

    def encode_directions(self, directions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs D"]:
        """Spherical harmonics of unit view directions."""
        # tcnn's spherical harmonics read directions mapped to [0, 1], nerfstudio's torch version unit vectors
        if self.direction_encoding.tcnn_encoding is not None:
            directions = (directions + 1.0) / 2.0
        return self.direction_encoding(directions.reshape(-1, 3)).reshape(*directions.shape[:-1], -1)

    def regularisation(self) -> Float[Tensor, ""]:
        """Total variation of the feature grids or planes (zero for hash grids)."""
        return self.encoding.regularisation()

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Feature grids and MLP heads apart: grids train best with a larger learning rate than MLPs
        ("grid" backbone: Adam 5e-2 for the grids, 1e-2 for the heads; benchmarks/field_backbones.py)."""
        encoding = list(self.encoding.parameters())
        heads = [*self.density_heads.parameters(), *self.colour_heads.parameters()]
        if self.appearance is not None:
            heads.append(self.appearance)
        return {"object_encodings": encoding, "object_heads": heads}
