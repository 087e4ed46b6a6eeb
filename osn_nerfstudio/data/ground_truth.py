"""What a generated scene's ground truth says about its valid configurations (``evaluation.amodal_depth``).

With every object's amodal depth at every pixel of the video, the exact valid set is the validity rule without
tolerance applied to every pixel: the configurations under which the Z-buffer of the true per-object depths shows
each pixel's labelled object. It is what a perfect method would learn, so benchmarks and tests compare the learned
set with it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from osn_nerfstudio.core.valid_set import ValidSet
from osn_nerfstudio.core.validity import SupervisionCache, ValidityConfig, valid_set
from osn_nerfstudio.data.scene_format import Scene, read_amodal_depth

EXACT_RULE = ValidityConfig(tolerance=0.0, min_tolerated=0.0)
"""The validity rule without tolerance: every contested pixel must be explained."""


def amodal_depth(scene: Scene) -> np.ndarray:
    """[K, F, H, W] z-depth of each object alone at its true scale (background units), inf where it is missed."""
    if scene.evaluation is None or scene.evaluation.amodal_depth is None:
        raise ValueError(f"{scene.root}: the scene has no evaluation.amodal_depth (only generated scenes do).")
    return read_amodal_depth(scene.path(scene.evaluation.amodal_depth))


def exact_cache(scene: Scene, pixels: Optional[np.ndarray] = None) -> SupervisionCache:
    """The contested pixels of the whole video (the labelled object and another one cover it) with each object's
    true own-unit depth; accumulation 1 where an object covers a pixel, 0 elsewhere. Uncontested pixels are left
    out: every configuration explains them. ``pixels`` ([F, H, W] bool) keeps only those pixels."""
    scales = scene.evaluation.relative_scales
    if scales is None:
        raise ValueError(f"{scene.root}: the scene has no evaluation.relative_scales.")
    depth_all = amodal_depth(scene)
    depths, labels = [], []
    for v in range(scene.num_frames):
        ids = scene.load_mask(v).reshape(-1).astype(np.int64)
        depth = np.asarray(depth_all[:, v]).reshape(scene.num_objects, -1).T  # [H*W, K]
        known = (ids >= 0) & (ids < scene.num_objects)
        covered = np.isfinite(depth)
        label_covered = covered[np.arange(len(ids)), np.where(known, ids, 0)] & known
        contested = label_covered & (covered.sum(1) >= 2)
        if pixels is not None:
            contested &= pixels[v].reshape(-1)
        depths.append(depth[contested])
        labels.append(ids[contested])
    depth = torch.from_numpy(np.concatenate(depths)).double()
    hit = torch.isfinite(depth)
    own_units = torch.where(hit, depth, torch.ones_like(depth)) / torch.from_numpy(scales).double()
    return SupervisionCache(
        depth=own_units,
        acc=hit.double(),
        label=torch.from_numpy(np.concatenate(labels)),
        weight=torch.ones(len(depth), dtype=torch.float64),
    )


def exact_valid_set(scene: Scene, scale_range: Float[Tensor, "K 2"]) -> ValidSet:
    """The configurations within ``scale_range`` that explain every pixel of the video with the true depths."""
    return valid_set(exact_cache(scene), scale_range, EXACT_RULE).valid


def occlusion_counts(scene: Scene) -> np.ndarray:
    """[K, K] pixels of the video where object i is visible in front of object j's amodal silhouette."""
    depth_all = amodal_depth(scene)
    counts = np.zeros((scene.num_objects, scene.num_objects), dtype=np.int64)
    for v in range(scene.num_frames):
        ids = scene.load_mask(v)
        covered = np.isfinite(np.asarray(depth_all[:, v]))
        for j in range(scene.num_objects):
            behind = covered[j] & (ids != j) & (ids >= 0) & (ids < scene.num_objects)
            counts[:, j] += np.bincount(ids[behind], minlength=scene.num_objects)
    return counts
