"""Validity labelling of a trained OSN model: the one place where the supervision rays are drawn, every object is
rendered alone on them, and the validity rule turns those renders into the labelled valid set (docs/method.md).

The model's refits, the viewer's read-outs, ``osn-sample-configurations`` and the benchmarks all call
:func:`label_validity`; its settings are the model's nested ``validity`` config
(:class:`osn_nerfstudio.core.validity.ValidityConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio import console
from osn_nerfstudio.core.compositing import depth_spread, render_alone
from osn_nerfstudio.core.valid_set import ValidSet
from osn_nerfstudio.core.validity import LabelledSet, SupervisionCache, valid_set
from osn_nerfstudio.data.osn_datamanager import concat_bundles, random_rows
from osn_nerfstudio.data.osn_dataset import UNKNOWN_OBJECT


@dataclass
class ValidityLabels:
    """What labelling found: the per-object renders of the supervision rays, and the set the rule labels valid."""

    cache: SupervisionCache
    labelled: LabelledSet

    @property
    def valid(self) -> ValidSet:
        return self.labelled.valid


def label_validity(model, datamanager, generator: torch.Generator, progress: bool = False) -> ValidityLabels:
    """Draw supervision rays from ``datamanager`` (with ``generator``), render every object of ``model`` alone on
    them, and label the configurations valid that the validity rule accepts. With ``progress`` a progress bar shows
    the rendering."""
    cache = supervision_cache_of(model, datamanager, generator, progress)
    return ValidityLabels(cache, labelled_set(model, cache))


def labelled_set(model, cache: SupervisionCache) -> LabelledSet:
    """What the validity rule labels valid on ``cache`` (``.valid``), with what it set aside."""
    return valid_set(cache, model.scale_range.cpu(), model.config.validity)


def supervision_cache_of(model, datamanager, generator: torch.Generator, progress: bool = False) -> SupervisionCache:
    """The cache of a fresh draw of the datamanager's supervision rays (the model's validity settings)."""
    config = model.config.validity
    rays, labels, weights = datamanager.supervision_rays(
        config.pixels_per_object, generator, config.boundary_pixels_per_object, config.boundary_width, config.label_gap
    )
    if config.hidden_pixels_per_pair > 0:
        hidden_rays, hidden_labels = hidden_object_rays(model, datamanager, generator)
        rays = concat_bundles(rays, hidden_rays)
        labels, weights = torch.cat([labels, hidden_labels]), torch.cat([weights, torch.ones(len(hidden_labels))])
    return supervision_cache(model, rays, labels, weights, progress=progress)


@torch.no_grad()
def supervision_cache(
    model, ray_bundle: RayBundle, labels: Tensor, weights: Tensor, chunk: int = 4096, progress: bool = False
) -> SupervisionCache:
    """Every object of ``model`` rendered alone on the supervision rays: own-unit depth, accumulation and spread."""
    depths, accs, spreads = [], [], []
    ones = torch.ones(1, model.num_objects, device=model.bbox_min.device)
    starts = range(0, len(ray_bundle), chunk)
    if progress:
        description = "Rendering every object alone on the supervision rays"
        starts = console.track(starts, description, console=CONSOLE, transient=True)
    for start in starts:
        rays = ray_bundle[start : start + chunk].to(model.bbox_min.device)
        samples, _ = model.sample_objects(rays, ones.expand(len(rays), -1), clip_near=False)
        alone = render_alone(samples)
        depths.append(alone.depth)
        accs.append(alone.accumulation)
        spreads.append(depth_spread(alone, samples))
    return SupervisionCache(
        depth=torch.cat(depths).cpu(),
        acc=torch.cat(accs).cpu(),
        label=labels.long().cpu(),
        weight=weights.float().cpu(),
        spread=torch.cat(spreads).cpu(),
    )


@torch.no_grad()
def hidden_object_rays(model, datamanager, generator: torch.Generator) -> Tuple[RayBundle, Tensor]:
    """Supervision pixels where a foreground object lies hidden behind the object the video shows: the tightest
    evidence of which of two objects is in front, and rare among uniform pixels.

    In every frame, for every foreground object k, up to ``hidden_candidates`` pixels whose ray meets k's box but that
    show another object, at least ``hidden_gap`` pixels from any pixel showing k, are drawn; k is rendered alone on
    them, and those where it is opaque (accumulation above the rule's ``min_accumulation``) are kept, up to
    ``hidden_pixels_per_pair`` per (shown, hidden) pair. Returns the rays and their labels.
    """
    config = model.config.validity
    labels = datamanager.supervising_labels(config.label_gap)
    num_frames, height, width = labels.shape
    found: Dict[Tuple[int, int], List[Tensor]] = {}
    ones = torch.ones(1, model.num_objects, device=model.bbox_min.device)
    for frame in range(num_frames):
        flat = labels[frame].reshape(-1)
        pixels = torch.arange(len(flat))
        rays = datamanager.pixel_rays(torch.full_like(pixels, frame), pixels // width, pixels % width)
        hits = model.rays_in_boxes(rays, ones.expand(len(rays), -1), clip_near=False).hit.cpu()
        for k in range(1, model.num_objects):
            away = ~datamanager.near_object(frame, k, config.hidden_gap).reshape(-1) if config.hidden_gap > 0 else True
            candidates = ((flat != UNKNOWN_OBJECT) & (flat != k) & hits[:, k] & away).nonzero()[:, 0]
            candidates = random_rows(candidates, config.hidden_candidates, generator)
            if len(candidates) == 0:
                continue
            alone = F.one_hot(torch.full((len(candidates),), k), model.num_objects).bool().to(ones.device)
            samples, _ = model.sample_objects(
                rays[candidates.to(ones.device)], ones.expand(len(candidates), -1), alone, False
            )
            opaque = candidates[render_alone(samples).accumulation[:, k].cpu() > config.min_accumulation]
            for shown in flat[opaque].unique().tolist():
                found.setdefault((shown, k), []).append(frame * height * width + opaque[flat[opaque] == shown])
    picks = [random_rows(torch.cat(p), config.hidden_pixels_per_pair, generator) for p in found.values()]
    picks = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    frame, pixel = picks // (height * width), picks % (height * width)
    return datamanager.pixel_rays(frame, pixel // width, pixel % width), labels[frame, pixel // width, pixel % width]

