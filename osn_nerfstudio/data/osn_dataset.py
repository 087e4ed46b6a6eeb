"""Dataset adding per-pixel object ids (and ground-truth depth and co-visibility on evaluation splits) to each image."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch
from PIL import Image

from nerfstudio.data.datasets.base_dataset import InputDataset

from osn_nerfstudio.data.scene_format import read_depth, read_mask

UNKNOWN_OBJECT = -1
"""Object id of pixels whose object is unknown (the scene's ignore label); the one id every part of the plugin uses
for them."""


class OSNDataset(InputDataset):
    """Images of an OSN scene; ``object_id`` and ``gt_depth`` are pixel-aligned [H, W, 1] tensors."""

    def get_metadata(self, data: Dict) -> Dict:
        index = data["image_idx"]
        height, width = data["image"].shape[:2]
        out = {"object_id": self._object_ids(self.metadata["mask_filenames"][index], height, width)}
        if "depth_filenames" in self.metadata:
            out["gt_depth"] = self._depth(self.metadata["depth_filenames"][index], height, width)
        if "covisibility_filenames" in self.metadata:
            covisible = read_mask(self.metadata["covisibility_filenames"][index]) != 0
            out["covisibility_mask"] = torch.from_numpy(covisible)[..., None]
        return out

    def _object_ids(self, path: Path | None, height: int, width: int) -> torch.Tensor:
        if path is None:
            return torch.full((height, width, 1), UNKNOWN_OBJECT, dtype=torch.long)
        labels = read_mask(path)
        if labels.shape != (height, width):
            labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((width, height), Image.NEAREST))
        ids = torch.from_numpy(labels.astype(np.int64))
        ids[ids == self.metadata["ignore_label"]] = UNKNOWN_OBJECT
        return ids[..., None]

    @staticmethod
    def _depth(path: Path, height: int, width: int) -> torch.Tensor:
        depth = read_depth(path)
        if depth.shape != (height, width):
            depth = np.asarray(Image.fromarray(depth).resize((width, height), Image.NEAREST))
        return torch.from_numpy(depth)[..., None]
