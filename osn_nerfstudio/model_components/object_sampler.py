"""Per-object box sampling: every ray sampled inside each object's own box, in that object's own units.

The OSN model renders K objects along every ray (docs/method.md). Each object is sampled only where the ray meets
its box, with nerfstudio's samplers (stratified, then PDF from the coarse weights), and its field is evaluated on its
samples alone. :func:`rays_in_boxes` maps rays into every object's frame and finds where they enter and leave its
box; :class:`ObjectBoxSampler` samples those intervals and evaluates the fields, returning the dense
``[R, K, N]`` layout that :mod:`osn_nerfstudio.core.compositing` renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler

from osn_nerfstudio.core.compositing import ObjectSamples
from osn_nerfstudio.core.geometry import intersect_aabb, normalise_to_box, rays_in_objects
from osn_nerfstudio.fields.object_fields import ObjectRadianceFields


@dataclass
class BoxRays:
    """Every ray in every object's frame and units, and the part of it inside the object's box."""

    origins: Float[Tensor, "R K 3"]
    directions: Float[Tensor, "R K 3"]
    """Unit-length directions in object space."""
    nears: Float[Tensor, "R K"]
    """Where the ray enters the box (object units, clipped by the scene's near bound when asked)."""
    fars: Float[Tensor, "R K"]
    """Where the ray leaves the box."""
    hit: Bool[Tensor, "R K"]
    """The ray meets the box of a present object over a non-empty interval."""
    present: Bool[Tensor, "R K"]
    """The object is registered in a frame next to the ray's (its pose there is known)."""
    frames: Optional[Float[Tensor, " R"]] = None
    """Fractional video frame of every ray (the fields' appearance codes); None: frame 0."""


def rays_in_boxes(
    ray_bundle: RayBundle,
    camera_to_object: Float[Tensor, "R K 4 4"],
    present: Bool[Tensor, "R K"],
    bbox_min: Float[Tensor, "K 3"],
    bbox_max: Float[Tensor, "K 3"],
    scales: Float[Tensor, "R K"],
    near: Optional[float] = None,
    frames: Optional[Float[Tensor, " R"]] = None,
) -> BoxRays:
    """Each ray in each object's frame at ``scales`` (``camera_to_object`` at the ray's time), where it enters and
    leaves the object's box, and whether it meets it. With ``near`` nothing closer to the camera than that scene
    distance is kept; renders of objects alone in their own units pass None, since their units say nothing about the
    scene's near bound. ``frames`` (each ray's fractional frame) is carried for the fields' appearance codes."""
    origins, directions = rays_in_objects(
        ray_bundle.origins, ray_bundle.directions, camera_to_object[:, 0], camera_to_object, scales
    )
    nears, fars, hit = intersect_aabb(origins, directions, bbox_min.expand_as(origins), bbox_max.expand_as(origins))
    if near is not None:
        nears = torch.maximum(nears, near / scales)
    return BoxRays(origins, directions, nears, fars, hit & present & (fars > nears), present, frames)


class ObjectBoxSampler(nn.Module):
    """Stratified samples inside each object's box, then PDF samples from their weights; every object's field is
    evaluated on its own samples only (one block per object).

    Args:
        num_objects: K.
        num_coarse: stratified samples per (ray, object) pair.
        num_fine: PDF samples per pair (the coarse ones are kept too).
        background_coarse: stratified samples per pair of the background (object 0); None: ``num_coarse``.
        background_fine: PDF samples per pair of the background; None: ``num_fine``.
    """

    def __init__(
        self,
        num_objects: int,
        num_coarse: int,
        num_fine: int,
        background_coarse: Optional[int] = None,
        background_fine: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.num_objects = num_objects
        self.background_budget = (background_coarse or num_coarse, background_fine or num_fine)
        """(stratified, PDF) samples per pair of the background."""
        self.object_budget = (num_coarse, num_fine)
        """(stratified, PDF) samples per pair of every other object."""
        self.coarse_sampler = UniformSampler(num_samples=num_coarse)
        self.fine_sampler = PDFSampler(num_samples=num_fine, include_original=True)

    def forward(
        self,
        box_rays: BoxRays,
        fields: ObjectRadianceFields,
        bbox_min: Float[Tensor, "K 3"],
        bbox_max: Float[Tensor, "K 3"],
        active: Optional[Bool[Tensor, "R K"]] = None,
    ) -> ObjectSamples:
        """Samples of every object along every ray, with ``fields`` evaluated there.

        Only (ray, object) pairs where the ray meets the object's box (and ``active`` allows) are evaluated; the
        others get zero density. Each pair's samples go to its slot of the dense ``[R, K, N]`` layout, N being the
        largest budget; a smaller budget is padded with empty samples (no density, no interval).
        """
        num_rays, num_objects = box_rays.hit.shape
        hit = box_rays.hit if active is None else box_rays.hit & active
        # pairs ordered by object, so that each object's samples are one contiguous block for its field
        objects, rays = torch.nonzero(hit.T, as_tuple=True)
        pair_rays = RayBundle(
            origins=box_rays.origins[rays, objects],
            directions=box_rays.directions[rays, objects],
            pixel_area=torch.ones(len(rays), 1, device=hit.device),
            nears=box_rays.nears[rays, objects, None],
            fars=box_rays.fars[rays, objects, None],
        )
        # the background's pairs come first (pairs are in object order) and have their own budget
        num_background = int((objects == 0).sum())
        parts = (slice(0, num_background), slice(num_background, len(objects)))
        frames = box_rays.frames[rays] if box_rays.frames is not None else rays.new_zeros(len(rays), dtype=torch.float)
        blocks = [
            self.sample_pairs(pair_rays[part], objects[part], frames[part], fields, bbox_min, bbox_max, *budget)
            for part, budget in zip(parts, (self.background_budget, self.object_budget))
        ]
        width = max(block[0].shape[-1] for block in blocks)
        starts, ends, density, rgb = (torch.cat([pad_samples(block[i], width) for block in blocks]) for i in range(4))
        slots, num_slots = rays * num_objects + objects, num_rays * num_objects
        return ObjectSamples(
            starts=to_slots(starts, slots, num_slots).view(num_rays, num_objects, -1),
            ends=to_slots(ends, slots, num_slots).view(num_rays, num_objects, -1),
            density=to_slots(density, slots, num_slots).view(num_rays, num_objects, -1),
            rgb=to_slots(rgb, slots, num_slots).view(num_rays, num_objects, -1, 3),
        )

    def sample_pairs(
        self,
        pair_rays: RayBundle,
        objects: Int[Tensor, " P"],
        frames: Float[Tensor, " P"],
        fields: ObjectRadianceFields,
        bbox_min: Float[Tensor, "K 3"],
        bbox_max: Float[Tensor, "K 3"],
        num_coarse: int,
        num_fine: int,
    ) -> Tuple[Float[Tensor, "P N"], Float[Tensor, "P N"], Float[Tensor, "P N"], Float[Tensor, "P N 3"]]:
        """Samples of (ray, object) pairs in object space, grouped by object (``objects`` non-decreasing): every
        sample's interval (starts, ends), density and colour (at the pairs' fractional ``frames``),
        N = ``num_coarse + num_fine + 1``."""
        if len(objects) == 0:
            empty = pair_rays.origins.new_zeros(0, num_coarse + num_fine + 1)
            return empty, empty, empty, empty[..., None].expand(-1, -1, 3)
        counts = torch.bincount(objects, minlength=self.num_objects).tolist()

        def unit_points(positions: Float[Tensor, "P N 3"]) -> Float[Tensor, "P N 3"]:
            return normalise_to_box(positions, bbox_min[objects, None], bbox_max[objects, None]).clamp(0.0, 1.0)

        coarse = self.coarse_sampler(pair_rays, num_samples=num_coarse)
        # the PDF sampler detaches its bins, so the coarse densities never need gradients
        with torch.no_grad():
            coarse_points = unit_points(coarse.frustums.get_positions())
            coarse_density = torch.cat(
                [fields.object_density(k, block) for k, block in object_blocks(coarse_points, counts)]
            )
        fine = self.fine_sampler(pair_rays, coarse, coarse.get_weights(coarse_density[..., None]), num_samples=num_fine)
        # one direction per ray: the fields encode it once for all the ray's samples
        points, directions = unit_points(fine.frustums.get_positions()), pair_rays.directions[:, None, :]
        evaluated = [
            fields.object_forward(k, object_points, object_directions, object_frames)
            for (k, object_points), (_, object_directions), (_, object_frames) in zip(
                object_blocks(points, counts), object_blocks(directions, counts), object_blocks(frames[:, None], counts)
            )
        ]
        density = torch.cat([density for density, _ in evaluated])
        rgb = torch.cat([rgb for _, rgb in evaluated])
        return fine.frustums.starts[..., 0], fine.frustums.ends[..., 0], density, rgb


def object_blocks(values: Tensor, counts: List[int]) -> List[Tuple[int, Tensor]]:
    """(object, its rows) of ``values`` grouped by object with ``counts`` rows each, skipping empty objects."""
    return [(k, block) for k, block in enumerate(values.split(counts)) if len(block) > 0]


def pad_samples(values: Float[Tensor, "P N *rest"], width: int) -> Float[Tensor, "P W *rest"]:
    """Samples padded with zeros to ``width`` per pair: empty samples (no density, no interval) change no render."""
    missing = width - values.shape[1]
    if missing == 0:
        return values
    return torch.cat([values, values.new_zeros(values.shape[0], missing, *values.shape[2:])], dim=1)


def to_slots(values: Float[Tensor, " P *rest"], slots: Tensor, num_slots: int) -> Float[Tensor, " S *rest"]:
    """Rows of ``values`` placed at rows ``slots`` of a zero tensor with ``num_slots`` rows.

    Out of place: its backward only gathers the rows' gradients (in-place writes into a zero tensor would
    copy and mask the whole gradient once per write).
    """
    return values.new_zeros(num_slots, *values.shape[1:]).index_copy(0, slots, values)
