"""nerfstudio's pipeline for the OSN model: training through the (DistributedDataParallel-wrapped) model on one or
several devices, CPUs included, and evaluation of the test images at several configurations of object scales."""

from __future__ import annotations

import functools
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Type

import numpy as np
import torch
import torch.distributed as dist
import torchvision.utils as vutils
from PIL import Image
from torch.amp import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio.console import progress_bar
from osn_nerfstudio.core import metrics as metrics_lib

TIMING_KEYS = ("num_rays_per_sec", "fps")
"""Per-image keys that describe rendering speed rather than quality (reported for the render configuration only)."""


@dataclass
class OSNPipelineConfig(VanillaPipelineConfig):
    """nerfstudio's pipeline, with the model's training forward pass given the batch."""

    _target: Type = field(default_factory=lambda: OSNPipeline)


class OSNPipeline(VanillaPipeline):
    def __init__(
        self,
        config: OSNPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        # nerfstudio wraps the model for CUDA devices only (device_ids=[local_rank]); the wrap below serves CPUs too
        super().__init__(config, device, test_mode, world_size=1, local_rank=local_rank, grad_scaler=grad_scaler)
        self.world_size = world_size
        if world_size > 1:
            device_ids = [local_rank] if torch.device(device).type == "cuda" else None
            self._model = typing.cast(Model, DDP(self._model, device_ids=device_ids, find_unused_parameters=True))
            dist.barrier(device_ids=device_ids)
        # imported here: it loads the viewer (viser), which the plugin's entry points must not pay for
        from osn_nerfstudio.viewer_controls import attach_viewer_controls

        # scale sliders, sampling and validity read-outs in ns-viewer and in ns-train's viewer (docs/viewer.md)
        self.viewer_controls = attach_viewer_controls(self)

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """nerfstudio's callbacks (the model's refits among them), then one that moves the viewer's sliders to the
        render configuration a refit chose."""

        def follow_refit(step: int) -> None:
            if self.model.is_refit_step(step):
                self.viewer_controls.follow_render_scales()

        follow = TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], follow_refit)
        return [*super().get_training_callbacks(attributes), follow]

    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, Any]:
        """Metrics of every evaluation image at several configurations (docs/metrics.md).

        ``<metric>``: at the run's render configuration (``model.render_scales``); ``gt/<metric>``: at the true
        scales, when the scene has them; ``best_of_n/<metric>``: at the one of ``eval_num_configurations``
        configurations sampled from the scale network (seeded by ``eval_seed``) with the highest mean PSNR;
        ``mean_of_n/<metric>``: the mean over those N. ``scales/<configuration>/<object>`` records each
        configuration. Rendered images (``output_path``) are saved for the render and true configurations.
        The model's render scales are restored afterwards.
        """
        model = self.model
        render_scales = model.render_scales.clone()
        configurations = {"render": render_scales}
        if not torch.isnan(model.true_scales).any():
            configurations["gt"] = model.true_scales.clone()
        num_sampled = model.config.eval_num_configurations if model.num_objects > 1 else 0
        if num_sampled > 0:
            generator = torch.Generator(device=render_scales.device).manual_seed(model.config.eval_seed)
            sampled = model.scale_network.sample(num_sampled, generator=generator)
            if sampled.fell_back:
                CONSOLE.print(f"ns-eval configurations: {sampled.message}")
            configurations.update({f"sample_{i}": scales for i, scales in enumerate(sampled.scales)})

        image_prefixes = {"render": "eval", "gt": "gt_scales"}
        per_image = {}
        with model.evaluating(), progress_bar(CONSOLE) as progress:
            for name, scales in configurations.items():
                CONSOLE.print(f"Evaluating at configuration {name}: scales {[round(s, 4) for s in scales.tolist()]}")
                prefix = image_prefixes.get(name) if output_path is not None else None
                num_images = len(self.datamanager.fixed_indices_eval_dataloader)
                task = progress.add_task(f"configuration {name}", total=num_images)
                advance = functools.partial(progress.advance, task)
                with model.at_configuration(scales):
                    per_image[name] = self.evaluate_images(output_path, prefix, advance)

        averages = {name: average_over(rows, get_std) for name, rows in per_image.items()}
        results = dict(averages.pop("render"))
        if "gt" in averages:
            results.update(prefixed("gt", without_timing(averages.pop("gt"))))
        if averages:
            by_psnr = max(
                averages, key=lambda name: -math.inf if math.isnan(averages[name]["psnr"]) else averages[name]["psnr"]
            )
            results.update(prefixed("best_of_n", without_timing(averages[by_psnr])))
            results["best_of_n/index"] = float(by_psnr.removeprefix("sample_"))
            results.update(prefixed("mean_of_n", mean_over_configurations(list(averages.values()), get_std)))
        for name, scales in configurations.items():
            results.update({f"scales/{name}/{obj}": float(s) for obj, s in zip(model.object_names, scales.tolist())})

        if "lpips" not in results:
            _, note = metrics_lib.load_lpips()
            CONSOLE.print(note)
            if step is None:  # ns-eval's JSON takes text; the trainer logs numbers only
                results["lpips_note"] = note
        return results

    def evaluate_images(
        self, output_path: Optional[Path], image_prefix: Optional[str], advance: Callable[[], None] = lambda: None
    ) -> List[Dict[str, float]]:
        """Per-image metrics of every evaluation image at the model's current render scales; with an
        ``image_prefix``, the rendered images are saved in ``output_path`` too. ``advance`` is called after each
        image."""
        rows = []
        for index, (camera, batch) in enumerate(self.datamanager.fixed_indices_eval_dataloader):
            start = time.perf_counter()
            outputs = self.model.get_outputs_for_camera(camera=camera)
            seconds = time.perf_counter() - start
            metrics, images = self.model.get_image_metrics_and_images(outputs, self.with_covisibility(batch))
            metrics["num_rays_per_sec"] = float(camera.height * camera.width) / seconds
            metrics["fps"] = 1.0 / seconds
            if image_prefix is not None:
                output_path.mkdir(parents=True, exist_ok=True)
                for key, image in images.items():
                    vutils.save_image(
                        image.permute(2, 0, 1).cpu(), output_path / f"{image_prefix}_{key}_{index:04d}.png"
                    )
            rows.append(metrics)
            advance()
        return rows

    def with_covisibility(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The batch with its ``covisibility_mask`` from the model's ``eval_covisibility_masks`` directory."""
        directory = self.model.config.eval_covisibility_masks
        if directory is None or "covisibility_mask" in batch:
            return batch
        image_path = Path(self.datamanager.eval_dataset.image_filenames[int(batch["image_idx"])])
        path = Path(directory) / f"{image_path.stem}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"No co-visibility mask {path} for evaluation image {image_path}: eval_covisibility_masks needs one "
                "PNG per evaluation image, named like the image (nonzero = scored)."
            )
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) != 0
        if mask.shape != tuple(batch["image"].shape[:2]):
            raise ValueError(
                f"Co-visibility mask {path} is {mask.shape[1]}x{mask.shape[0]}; its image {image_path} is "
                f"{batch['image'].shape[1]}x{batch['image'].shape[0]}."
            )
        return {**batch, "covisibility_mask": torch.from_numpy(mask)[..., None]}


def average_over(rows: List[Dict[str, float]], get_std: bool) -> Dict[str, float]:
    """Mean (and sample standard deviation) of each metric over the images where it is defined (not NaN)."""
    out: Dict[str, float] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = torch.tensor([row.get(key, float("nan")) for row in rows], dtype=torch.float64)
        out.update(mean_and_std(key, values[~values.isnan()], get_std))
    return out


def mean_over_configurations(averages: List[Dict[str, float]], get_std: bool) -> Dict[str, float]:
    """Mean of each metric's per-configuration mean (and their standard deviation across configurations)."""
    out: Dict[str, float] = {}
    for key in averages[0]:
        if key.endswith("_std") or key in TIMING_KEYS:
            continue
        values = torch.tensor([average[key] for average in averages], dtype=torch.float64)
        out.update(mean_and_std(key, values[~values.isnan()], get_std))
    return out


def mean_and_std(key: str, values: torch.Tensor, get_std: bool) -> Dict[str, float]:
    out = {key: float(values.mean()) if len(values) else float("nan")}
    if get_std:
        out[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
    return out


def without_timing(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: v for k, v in metrics.items() if k.removesuffix("_std") not in TIMING_KEYS}


def prefixed(prefix: str, metrics: Dict[str, float]) -> Dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}
