"""Datamanager for OSN scenes: pixel rays with object ids, plus rays through every object's keypoints.

A training batch is nerfstudio's random pixel batch followed by ``num_keypoint_rays`` keypoint rays.
Every ray carries (batch keys, one row per ray):

* ``image`` [R, 3]: target colour;
* ``object_id`` [R, 1]: the object seen there (mask label, or the keypoint's object; -1 unknown);
* ``keypoint_depth`` [R]: z-depth of the keypoint in its object's own units (0 for pixel rays);
* ``keypoint_weight`` [R]: the keypoint's confidence (0 for pixel rays, so depth losses skip them).

The ray bundle carries each ray's object too, as ``metadata["object_id"]`` [R, 1]: the bootstrap renders only that
object, and the model's forward pass (through DistributedDataParallel when training on several devices) sees the
rays alone.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Iterator, List, Optional, Tuple, Type

import torch
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig

from osn_nerfstudio.data.osn_dataparser import METADATA_KEY, OSNDataParserConfig, OSNSceneMetadata
from osn_nerfstudio.data.osn_dataset import UNKNOWN_OBJECT, OSNDataset


@dataclass
class OSNDataManagerConfig(VanillaDataManagerConfig):
    """Pixel batches from every frame of the video plus keypoint rays; each ray knows its frame and object."""

    _target: Type = field(default_factory=lambda: OSNDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=OSNDataParserConfig)
    """The scene's dataparser: ``osn-data`` (the model needs its per-object metadata)."""
    num_keypoint_rays: int = 256
    """Keypoint rays appended to every training batch (sampled with probability proportional to weight)."""


class OSNDataManager(VanillaDataManager[OSNDataset]):
    config: OSNDataManagerConfig

    def setup_train(self) -> None:
        with unstarted_workers_unchecked():
            super().setup_train()

    def setup_eval(self) -> None:
        with unstarted_workers_unchecked():
            super().setup_eval()

    @property
    def scene_metadata(self) -> OSNSceneMetadata:
        return self.train_dataparser_outputs.metadata[METADATA_KEY]

    @cached_property
    def train_frames(self) -> Tuple[Tensor, Tensor]:
        """[F, H, W, 3] colours and [F, H, W] object ids (-1 unknown) of the whole video, loaded on first use
        (keypoint colours and supervision rays)."""
        frames = [self.train_dataset[i] for i in range(len(self.train_dataset))]
        return torch.stack([f["image"][..., :3] for f in frames]), torch.stack([f["object_id"][..., 0] for f in frames])

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        ray_bundle, batch = super().next_train(step)
        num_pixels = len(ray_bundle)
        batch["keypoint_depth"] = torch.zeros(num_pixels, device=self.device)
        batch["keypoint_weight"] = torch.zeros(num_pixels, device=self.device)
        if self.config.num_keypoint_rays <= 0:
            return with_objects(ray_bundle, batch), batch
        rows = torch.multinomial(self.scene_metadata.keypoint_weight, self.config.num_keypoint_rays, replacement=True)
        kp_bundle, kp_batch = self.keypoint_rays(rows)
        merged = {key: torch.cat([batch[key], kp_batch[key].to(batch[key].device)]) for key in kp_batch}
        return concat_bundles(with_objects(ray_bundle, batch), with_objects(kp_bundle, kp_batch)), merged

    def keypoint_rays(self, rows: Tensor) -> Tuple[RayBundle, Dict]:
        """Rays through keypoints ``rows`` of the scene, with their colour, object, depth and weight."""
        meta = self.scene_metadata
        frames = meta.keypoint_frame[rows]
        uv = meta.keypoint_uv[rows]
        cameras = self.train_dataset.cameras.to(self.device)
        bundle = cameras.generate_rays(
            camera_indices=frames[:, None].to(self.device), coords=uv.flip(-1).to(self.device)
        )
        images = self.train_frames[0]
        height, width = images.shape[1:3]
        x = uv[:, 0].long().clamp(0, width - 1)
        y = uv[:, 1].long().clamp(0, height - 1)
        batch = {
            "image": images[frames, y, x].to(self.device),
            "object_id": meta.keypoint_object[rows][:, None].to(self.device),
            "keypoint_depth": meta.keypoint_depth[rows].to(self.device),
            "keypoint_weight": meta.keypoint_weight[rows].to(self.device),
            "indices": torch.stack([frames, y, x], dim=-1),
        }
        return bundle, batch

    def supervision_rays(
        self,
        pixels_per_object: int,
        generator: torch.Generator,
        boundary_pixels_per_object: int = 0,
        boundary_width: int = 3,
        label_gap: int = 0,
    ) -> Tuple[RayBundle, Tensor, Tensor]:
        """Rays that decide validity: every keypoint, up to ``pixels_per_object`` mask pixels of each object, and up
        to ``boundary_pixels_per_object`` pixels of each object within ``boundary_width`` pixels of another object
        (where the video shows which of the two is in front).

        Mask pixels are only taken where their object is registered in their frame (elsewhere no render can place
        it) and, with ``label_gap``, at least that many pixels away from any other label: a mask's outline is where
        it is least certain (anti-aliasing, a segmenter's error) and where a learned field's silhouette is softest.

        Returns the rays, their object labels [R] and weights [R] (keypoint confidence, 1 for pixels).
        """
        meta = self.scene_metadata
        kp_bundle, kp_batch = self.keypoint_rays(torch.arange(len(meta.keypoint_weight)))
        ids = self.train_frames[1]
        inside, near_other = supervision_masks(ids, meta.registered, meta.num_objects, label_gap, boundary_width)
        picks = [random_rows(torch.nonzero(mask), pixels_per_object, generator) for mask in inside]
        if boundary_pixels_per_object > 0:
            picks += [random_rows(torch.nonzero(near), boundary_pixels_per_object, generator) for near in near_other]
        frame, y, x = torch.cat(picks).unbind(-1)
        labels = torch.cat([kp_batch["object_id"][:, 0].cpu(), ids[frame, y, x]])
        weights = torch.cat([kp_batch["keypoint_weight"].cpu(), torch.ones(len(frame))])
        return concat_bundles(kp_bundle, self.pixel_rays(frame, y, x)), labels, weights

    def pixel_rays(self, frame: Tensor, y: Tensor, x: Tensor) -> RayBundle:
        """Rays through the centres of training pixels (frame, row, column)."""
        coords = torch.stack([y, x], dim=-1).float() + 0.5
        cameras = self.train_dataset.cameras.to(self.device)
        return cameras.generate_rays(camera_indices=frame[:, None].to(self.device), coords=coords.to(self.device))

    def near_object(self, frame: int, k: int, distance: int) -> Tensor:
        """[H, W] pixels of a training frame within ``distance`` pixels of a pixel labelled ``k``."""
        return within((self.train_frames[1][frame] == k)[None], distance)[0]

    def supervising_labels(self, gap: int) -> Tensor:
        """[F, H, W] the label of every pixel that may supervise validity (see ``supervision_rays``), -1 elsewhere."""
        meta = self.scene_metadata
        ids = self.train_frames[1]
        inside, _ = supervision_masks(ids, meta.registered, meta.num_objects, gap, 0)
        return torch.where(torch.stack(inside).any(0), ids, torch.full_like(ids, UNKNOWN_OBJECT))


@contextlib.contextmanager
def unstarted_workers_unchecked() -> Iterator[None]:
    """nerfstudio builds its image loaders with 4 workers per process, which torch warns about on machines with fewer
    CPUs; the images are all cached up front, so those workers never start. That one warning is silenced here."""
    with warnings.catch_warnings():
        message, module = r"This DataLoader will create \d+ worker processes", r"torch\.utils\.data\.dataloader"
        warnings.filterwarnings("ignore", message, UserWarning, module)
        yield


def random_rows(rows: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Up to ``count`` rows of ``rows`` (any [N, ...] tensor), drawn without replacement."""
    return rows[torch.randperm(len(rows), generator=generator)[:count]]


def supervision_masks(
    ids: Tensor, registered: Tensor, num_objects: int, gap: int, width: int
) -> Tuple[List[Tensor], List[Tensor]]:
    """Per object k, the [F, H, W] pixels that may supervise validity, and those of them near another object.

    A pixel may supervise when it shows k, k is registered in its frame, and no other label (unknown included) lies
    within ``gap`` pixels (8-neighbourhood). It is near another object when some other object's pixel lies within
    ``gap + width`` pixels.
    """
    registered_here = registered[ids.clamp_min(0), torch.arange(len(ids))[:, None, None]] & (ids != UNKNOWN_OBJECT)
    inside, near_other = [], []
    for k in range(num_objects):
        mine = ids == k
        clear = mine if gap == 0 else ~within(~mine, gap)
        clear &= registered_here
        inside.append(clear)
        near_other.append(clear & within((ids != UNKNOWN_OBJECT) & ~mine, gap + width))
    return inside, near_other


def within(mask: Tensor, distance: int) -> Tensor:
    """[F, H, W] pixels with a pixel of ``mask`` within ``distance`` pixels (8-neighbourhood, Chebyshev distance)."""
    size = 2 * distance + 1
    return torch.nn.functional.max_pool2d(mask.float()[:, None], size, stride=1, padding=distance)[:, 0] > 0


def with_objects(ray_bundle: RayBundle, batch: Dict) -> RayBundle:
    """``ray_bundle`` carrying each ray's object (``batch["object_id"]`` [R, 1]) in its metadata."""
    ray_bundle.metadata["object_id"] = batch["object_id"].to(ray_bundle.origins.device)
    return ray_bundle


def concat_bundles(first: RayBundle, second: RayBundle) -> RayBundle:
    """One bundle with the rays of ``first`` followed by those of ``second`` (same fields and metadata keys)."""

    def cat(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
        if a is None or b is None:
            return None
        return torch.cat([a, b.to(a.device)])

    return RayBundle(
        origins=torch.cat([first.origins, second.origins.to(first.origins.device)]),
        directions=torch.cat([first.directions, second.directions.to(first.origins.device)]),
        pixel_area=torch.cat([first.pixel_area, second.pixel_area.to(first.origins.device)]),
        camera_indices=cat(first.camera_indices, second.camera_indices),
        nears=cat(first.nears, second.nears),
        fars=cat(first.fars, second.fars),
        times=cat(first.times, second.times),
        metadata={
            key: torch.cat([value, second.metadata[key].to(value.device)]) for key, value in first.metadata.items()
        },
    )
