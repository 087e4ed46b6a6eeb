"""The OSN nerfstudio model: per-object fields, scaled composite rendering, and the object scale network.

Training has two phases (docs/method.md), chosen from the step alone so that a resumed run continues
where it stopped:

1. bootstrap (``bootstrap_steps``): every object learns alone from the rays of its own mask pixels and
   keypoints (colour, opacity, keypoint depth in its own units);
2. alternation: the fields learn from scaled composite renders at configurations the scale network calls
   valid; every ``steps_per_round`` steps (and once when the bootstrap ends) the per-object depth cache
   of the supervision rays is refreshed and the scale network is refitted on exact validity labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps, comms
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio import distributed
from osn_nerfstudio.core import metrics as metrics_lib
from osn_nerfstudio.core.compositing import (
    AloneOutputs,
    CompositeOutputs,
    ObjectSamples,
    composite,
    distortion,
    render_alone,
)
from osn_nerfstudio.core.geometry import interpolate_poses
from osn_nerfstudio.core.scale_ranges import closest_configuration
from osn_nerfstudio.core.validity import ValidityConfig, labelled_candidates
from osn_nerfstudio.data.osn_dataparser import METADATA_KEY, OSNSceneMetadata
from osn_nerfstudio.data.osn_dataset import UNKNOWN_OBJECT
from osn_nerfstudio.fields.object_fields import ObjectExtent, ObjectFields, ObjectFieldsConfig
from osn_nerfstudio.model_components.object_sampler import BoxRays, ObjectBoxSampler, rays_in_boxes
from osn_nerfstudio.scale_network import ObjectScaleNetwork, ScaleNetworkConfig
from osn_nerfstudio.validity_labels import label_validity


@dataclass
class OSNModelConfig(ModelConfig):
    """OSN model settings: sampling, schedule, validity and losses."""

    _target: Type = field(default_factory=lambda: OSNModel)
    enable_collider: bool = False
    """Objects are sampled inside their own boxes; nerfstudio's scene collider is not used."""
    fields: ObjectFieldsConfig = field(default_factory=ObjectFieldsConfig)
    """Per-object radiance fields."""
    scale_network: ScaleNetworkConfig = field(default_factory=ScaleNetworkConfig)
    """The object scale network."""
    num_coarse_samples: int = 16
    """Stratified samples per object and ray inside the object's box (density only)."""
    num_fine_samples: int = 16
    """Samples per object and ray drawn from the coarse weights (nerfstudio's PDF sampler); the coarse ones
    are kept too."""
    background_coarse_samples: Optional[int] = None
    """Stratified samples per ray in the background's box (None: ``num_coarse_samples``): a room seen from inside
    spans metres of every ray where a ball spans centimetres."""
    background_fine_samples: Optional[int] = None
    """PDF samples per ray in the background's box (None: ``num_fine_samples``)."""
    background_color: Literal["black", "white"] = "black"
    """Colour behind everything, for rays that leave every object."""
    bootstrap_steps: int = 1000
    """Steps of phase 1, where each object learns alone."""
    steps_per_round: int = 500
    """Field steps between two refits of the scale network in phase 2."""
    configurations_per_batch: int = 4
    """Valid configurations sampled per training step; the batch's rays are split among them."""
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    """Validity labelling: the supervision rays, the rule that labels configurations valid, the labelled candidates."""
    rgb_loss_mult: float = 1.0
    """Colour loss of composite renders (phase 2)."""
    alone_rgb_loss_mult: float = 1.0
    """Colour loss of the labelled object rendered alone (phase 1; scaled by ``alone_loss_phase2`` after)."""
    alone_accumulation_loss_mult: float = 0.1
    """Pushes the labelled object's opacity to 1 where it is visible."""
    carving_loss_mult: float = 0.01
    """Pushes every foreground object's opacity alone towards 0 on other objects' pixels (weak: frames that show a
    part keep it; fog no frame shows is carved away, docs/method.md)."""
    keypoint_depth_loss_mult: float = 0.1
    """Relative keypoint depth error, alone (own units) and in the composite (scaled by s_k)."""
    segmentation_loss_mult: float = 0.05
    """NLL of the labelled object's share of the composite weights (phase 2)."""
    alone_loss_phase2: float = 0.1
    """Factor on the alone losses during phase 2 (they keep the Z-buffer's per-object depths sharp)."""
    distortion_loss_mult: float = 0.0
    """mip-NeRF 360's distortion of each object's weights alone (along its rays, as a fraction of its box's
    diagonal): gathers density into surfaces instead of fog."""
    regularisation_mult: float = 0.0
    """Weight of the fields' own regulariser (total variation of grids)."""
    render_frame: float = 0.0
    """Frame shown when a camera carries neither a frame index nor a time."""
    eval_num_configurations: int = 4
    """Configurations sampled from the scale network for ns-eval's best-of-N and mean-of-N metrics
    (each one renders every evaluation image again)."""
    eval_seed: int = 0
    """Seed of the configurations ns-eval samples, so that its results are reproducible."""
    eval_covisibility_masks: Optional[str] = None
    """Directory of co-visibility masks, one PNG per evaluation image named like the image file, for scenes whose
    test views have none of their own; ns-eval scores only the masks' nonzero pixels."""


class OSNModel(Model):
    """Renders K rigid objects at a configuration of scales and learns which configurations are valid."""

    config: OSNModelConfig

    def populate_modules(self):
        super().populate_modules()
        if METADATA_KEY not in self.kwargs.get("metadata", {}):
            raise ValueError("The osn model needs an OSN scene: train with the osn-data dataparser (--data SCENE).")
        meta: OSNSceneMetadata = self.kwargs["metadata"][METADATA_KEY]
        self.object_names: List[str] = list(meta.object_names)
        self.num_objects = meta.num_objects
        self.register_buffer("camera_to_object", meta.camera_to_object.clone())
        self.register_buffer("registered", meta.registered.clone())
        self.register_buffer("bbox_min", meta.bbox_min.clone())
        self.register_buffer("bbox_max", meta.bbox_max.clone())
        self.register_buffer("frame_times", meta.frame_times.clone())
        self.register_buffer("scale_range", meta.scale_range.clone())
        self.register_buffer("depth_bounds", torch.tensor([meta.near, meta.far]))
        true = meta.true_scales if meta.true_scales is not None else torch.full((self.num_objects,), float("nan"))
        self.register_buffer("true_scales", true.clone())
        self.register_buffer("render_scales", torch.ones(self.num_objects))
        self.register_buffer("train_scales", torch.ones(self.config.configurations_per_batch, self.num_objects))
        self.fields = ObjectFields(
            self.num_objects, self.config.fields, object_extents(meta), meta.focal, meta.num_frames
        )
        for parameter in self.fields.parameters():
            parameter.register_hook(zero_non_finite)
        self.scale_network = ObjectScaleNetwork(meta.scale_range, self.config.scale_network)
        self.sampler = ObjectBoxSampler(
            self.num_objects,
            self.config.num_coarse_samples,
            self.config.num_fine_samples,
            self.config.background_coarse_samples,
            self.config.background_fine_samples,
        )
        color = 1.0 if self.config.background_color == "white" else 0.0
        self.register_buffer("background", torch.full((3,), color))
        self.step = 0
        self.sampling_fallbacks = 0
        """Training-configuration draws since the last refit that fell back to best-scored candidates."""

    # ---------------------------------------------------------------- schedule

    def phase(self, step: int) -> Literal["bootstrap", "alternation"]:
        return "bootstrap" if step < self.config.bootstrap_steps else "alternation"

    def is_refit_step(self, step: int) -> bool:
        """Refit after the bootstrap's last step and after every round of phase 2."""
        done = step + 1 - self.config.bootstrap_steps
        return done >= 0 and done % self.config.steps_per_round == 0

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return self.fields.param_groups()

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        pipeline = attributes.pipeline

        def before_step(step: int) -> None:
            self.step = step
            if self.phase(step) == "alternation":
                # seeded by the step: every process of a multi-device run draws the same configurations
                generator = torch.Generator().manual_seed(TRAINING_DRAWS_SEED + step)
                drawn = self.scale_network.sample(self.config.configurations_per_batch, generator)
                self.sampling_fallbacks += int(drawn.fell_back)
                self.train_scales.copy_(drawn.scales)

        def after_step(step: int) -> None:
            if self.is_refit_step(step):
                assert pipeline is not None
                self.refit_scale_network(pipeline.datamanager, step)

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step, update_every_num_iters=1),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_step, update_every_num_iters=1),
        ]

    # ---------------------------------------------------------------- rendering

    def frame_positions(self, ray_bundle: RayBundle) -> Float[Tensor, " R"]:
        """Fractional frame of every ray: camera metadata, else its time, else ``render_frame``."""
        num_rays = ray_bundle.origins.shape[0]
        if "frame_index" in ray_bundle.metadata:
            return ray_bundle.metadata["frame_index"][:, 0].float()
        if ray_bundle.times is not None:
            return time_to_frame(ray_bundle.times[:, 0], self.frame_times)
        return torch.full((num_rays,), self.config.render_frame, device=ray_bundle.origins.device)

    def rays_in_boxes(self, ray_bundle: RayBundle, scales: Float[Tensor, "R K"], clip_near: bool) -> BoxRays:
        """Every ray in every object's frame and units at its frame's poses, and the part of it inside the object's box
        (see :func:`rays_in_boxes`); with ``clip_near``, nothing closer than the scene's near bound at ``scales``."""
        frames = self.frame_positions(ray_bundle)
        poses, present = interpolate_poses(self.camera_to_object, self.registered, frames)
        near = self.depth_bounds[0] if clip_near else None
        return rays_in_boxes(ray_bundle, poses, present, self.bbox_min, self.bbox_max, scales, near, frames)

    def sample_objects(
        self,
        ray_bundle: RayBundle,
        scales: Float[Tensor, "R K"],
        active: Optional[Bool[Tensor, "R K"]] = None,
        clip_near: bool = True,
    ) -> Tuple[ObjectSamples, Bool[Tensor, "R K"]]:
        """Samples of every object inside its box along every ray with the fields evaluated there (only where
        ``active`` allows), and whether each object is present on each ray (registered next to the ray's frame).

        Renders of objects alone in their own units (the bootstrap, the validity cache) pass ``clip_near=False``:
        their own units say nothing about the scene's near bound.
        """
        box_rays = self.rays_in_boxes(ray_bundle, scales, clip_near)
        return self.sampler(box_rays, self.fields, self.bbox_min, self.bbox_max, active), box_rays.present

    def scales_per_ray(self, num_rays: int, device) -> Float[Tensor, "R K"]:
        if self.training:
            groups = self.train_scales.shape[0]
            return self.train_scales[torch.arange(num_rays, device=device) % groups]
        return self.render_scales.expand(num_rays, -1)

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """Scaled composite render of every ray at its configuration, and each object alone.

        During the bootstrap's training steps each ray renders only its labelled object (``metadata["object_id"]``)
        and the foreground objects (for carving), each alone in its own units.
        """
        num_rays = ray_bundle.origins.shape[0]
        scales = self.scales_per_ray(num_rays, ray_bundle.origins.device)
        active, clip_near = None, True
        if self.training and self.phase(self.step) == "bootstrap" and "object_id" in ray_bundle.metadata:
            active, clip_near = self.bootstrap_objects(ray_bundle.metadata["object_id"][:, 0].long()), False
        samples, present = self.sample_objects(ray_bundle, scales, active, clip_near)
        mixed = composite(samples, scales, self.background)
        alone = render_alone(samples)
        outputs = {**self.collect_outputs(ray_bundle, scales, mixed, alone), "present": present}
        if self.training and self.config.distortion_loss_mult > 0:
            diagonal = (self.bbox_max - self.bbox_min).norm(dim=-1)
            outputs["alone_distortion"] = distortion(alone.weights, samples.starts, samples.ends) / diagonal
        return outputs

    def bootstrap_objects(self, labels: Tensor) -> Bool[Tensor, "R K"]:
        """Objects each ray renders during the bootstrap: its labelled one, and with carving every foreground one;
        none on rays of unknown objects."""
        active = F.one_hot(labels.clamp_min(0), self.num_objects).bool()
        if self.config.carving_loss_mult > 0:
            active[:, 1:] = True
        return active & (labels != UNKNOWN_OBJECT)[:, None]

    def collect_outputs(
        self, ray_bundle: RayBundle, scales: Tensor, mixed: CompositeOutputs, alone: AloneOutputs
    ) -> Dict[str, Tensor]:
        directions_norm = ray_bundle.metadata.get("directions_norm", torch.ones_like(mixed.depth))
        segmentation = mixed.object_weights / mixed.accumulation.clamp_min(1e-6)
        outputs = {
            "rgb": mixed.rgb,
            "depth": mixed.depth,
            "z_depth": mixed.depth / directions_norm,
            "accumulation": mixed.accumulation,
            "object_weights": mixed.object_weights,
            "segmentation": self.segmentation_colors()[segmentation.argmax(-1)],
            "alone_rgb": alone.rgb,
            "alone_depth": alone.depth,
            "alone_accumulation": alone.accumulation,
            "scales": scales,
            "directions_norm": directions_norm,
        }
        # each object alone at its scale (the viewer's per-object views): colour over the background, depth, opacity
        for k, name in enumerate(self.object_names):
            accumulation = alone.accumulation[:, k : k + 1]
            outputs[f"rgb_{name}"] = alone.rgb[:, k] + (1.0 - accumulation) * self.background
            outputs[f"depth_{name}"] = alone.depth[:, k : k + 1] * scales[:, k : k + 1]
            outputs[f"accumulation_{name}"] = accumulation
        return outputs

    def segmentation_colors(self) -> Float[Tensor, "K 3"]:
        return colormaps.apply_colormap(
            torch.linspace(0, 1, max(self.num_objects, 2), device=self.bbox_min.device)[: self.num_objects, None],
            colormaps.ColormapOptions(colormap="turbo"),
        )

    # ---------------------------------------------------------------- losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        return {"psnr": self.psnr(outputs["rgb"].detach(), image)}

    def psnr(self, prediction: Tensor, target: Tensor) -> Tensor:
        return -10.0 * torch.log10(F.mse_loss(prediction, target).clamp_min(1e-10))

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        device = outputs["rgb"].device
        image = batch["image"][..., :3].to(device)
        labels = batch["object_id"][:, 0].to(device).long()
        kp_weight = batch.get("keypoint_weight", torch.zeros_like(labels, dtype=torch.float)).to(device)
        kp_depth = batch.get("keypoint_depth", torch.zeros_like(kp_weight)).to(device)
        label_index = labels.clamp_min(0)[:, None]
        # a pixel of an unknown object, or of one not registered in its frame, shows what no render can place
        known = (labels != UNKNOWN_OBJECT) & outputs["present"].gather(1, label_index)[:, 0]
        directions_norm = outputs["directions_norm"][:, 0]
        # keypoint z-depth (own units) as a distance along the unit-length object-space ray
        kp_distance = kp_depth * directions_norm

        alone_rgb = outputs["alone_rgb"].gather(1, label_index[..., None].expand(-1, 1, 3))[:, 0]
        alone_acc = outputs["alone_accumulation"].gather(1, label_index)[:, 0]
        alone_depth = outputs["alone_depth"].gather(1, label_index)[:, 0]
        losses = {
            "alone_rgb": masked_mean(alone_colour_error(alone_rgb, alone_acc, image), known)
            * self.config.alone_rgb_loss_mult,
            "alone_accumulation": masked_mean((1 - alone_acc).pow(2), known) * self.config.alone_accumulation_loss_mult,
            "alone_keypoint_depth": weighted_relative_error(alone_depth, kp_distance, kp_weight)
            * self.config.keypoint_depth_loss_mult,
        }
        if self.config.carving_loss_mult > 0:
            others = outputs["alone_accumulation"][:, 1:].scatter(1, (label_index - 1).clamp_min(0), 0.0)
            others = torch.where((labels >= 1)[:, None], others, outputs["alone_accumulation"][:, 1:])
            losses["carving"] = masked_mean(others.sum(-1), known) * self.config.carving_loss_mult
        if self.phase(self.step) == "alternation" or not self.training:
            for key in losses:
                losses[key] = losses[key] * self.config.alone_loss_phase2
            scale_of_label = outputs["scales"].gather(1, label_index)[:, 0]
            label_weight = outputs["object_weights"].gather(1, label_index)[:, 0]
            share = label_weight / outputs["accumulation"][:, 0].clamp_min(1e-6)
            losses["rgb"] = masked_mean((outputs["rgb"] - image).pow(2).mean(-1), known) * self.config.rgb_loss_mult
            losses["keypoint_depth"] = (
                weighted_relative_error(outputs["depth"][:, 0], scale_of_label * kp_distance, kp_weight)
                * self.config.keypoint_depth_loss_mult
            )
            losses["segmentation"] = (
                masked_mean(-torch.log(share.clamp(1e-6, 1.0)), known) * self.config.segmentation_loss_mult
            )
        if "alone_distortion" in outputs:
            losses["distortion"] = outputs["alone_distortion"].sum(-1).mean() * self.config.distortion_loss_mult
        if self.training and self.config.regularisation_mult > 0:
            losses["regularisation"] = self.fields.regularisation() * self.config.regularisation_mult
        return losses

    # ---------------------------------------------------------------- scale network

    def refit_scale_network(self, datamanager, step: int) -> Dict[str, float]:
        """Label validity on fresh supervision rays, fit the scale network to candidates labelled by it, and choose
        the render configuration. On several devices the main process refits and the others receive its result."""
        if self.num_objects < 2:
            return {}
        stats = self.fit_scale_network(datamanager, step) if comms.is_main_process() else {}
        refitted = [*self.scale_network.parameters(), *self.scale_network.buffers(), self.render_scales]
        distributed.broadcast_from_main(refitted)
        distributed.check_processes_agree(self, f"After the refit at step {step}, the model")
        return stats

    def fit_scale_network(self, datamanager, step: int) -> Dict[str, float]:
        """The refit itself (:meth:`refit_scale_network`), seeded by the step so that it is reproducible."""
        generator = torch.Generator().manual_seed(step)
        with self.evaluating():
            labels = label_validity(self, datamanager, generator, progress=True)
        u, valid = labelled_candidates(labels.valid, self.scale_network.ranges, self.config.validity, generator)
        device = self.bbox_min.device
        self.scale_network.set_input_frame(u[valid].to(device))
        stats = self.scale_network.fit(u.to(device), valid.to(device), generator=generator)
        self.scale_network.set_proposal(labels.valid)
        self.choose_render_scales(generator)
        fallbacks, self.sampling_fallbacks = self.sampling_fallbacks, 0
        labelled = labels.labelled
        share = labelled.contradicted_weight / max(labelled.constraint_weight, 1e-12)
        CONSOLE.print(
            f"step {step}: scale network refit on {labels.cache.num_rays} rays ({labelled.constraint_weight:.0f} "
            f"constraints, {share:.1%} set aside as contradicted); {int(valid.sum())}/{len(valid)} candidates valid; "
            f"fit balanced accuracy {stats['balanced_accuracy']:.3f}"
            + (f"; {fallbacks} training draws fell back since the last refit" if fallbacks else "")
            + f"; render scales {[round(s, 3) for s in self.render_scales.tolist()]}"
        )
        return {"valid_fraction": float(valid.float().mean()), "contradicted_share": share, **stats}

    @torch.no_grad()
    def choose_render_scales(self, generator: torch.Generator, num_samples: int = 100) -> None:
        """Render at the sampled valid configuration closest to the truth (log space) when it is known."""
        sampled = self.scale_network.sample(num_samples, generator).scales.to(self.render_scales.device)
        if torch.isnan(self.true_scales).any():
            self.render_scales.copy_(sampled[0])
            return
        self.render_scales.copy_(sampled[closest_configuration(sampled, self.true_scales)[0]])

    @contextlib.contextmanager
    def at_configuration(self, scales: Float[Tensor, " K"]) -> Iterator[None]:
        """Render at ``scales`` inside the block; the render configuration is restored after it, whatever happens."""
        saved = self.render_scales.clone()
        self.render_scales.copy_(scales.to(saved.device))
        try:
            yield
        finally:
            self.render_scales.copy_(saved)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode inside the block (renders at the render configuration); the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ---------------------------------------------------------------- evaluation images

    @torch.no_grad()
    def get_outputs_for_camera(self, camera, obb_box=None) -> Dict[str, Tensor]:
        """Images of a camera: every output with 1 or 3 channels, so that ns-render, ns-eval and the viewer can
        show each one. The per-object stacks become one image per object: ``weight_<name>`` (its share of the
        composite weights); ``rgb_<name>``, ``depth_<name>`` and ``accumulation_<name>`` are already images."""
        outputs = super().get_outputs_for_camera(camera, obb_box)
        weights = outputs.pop("object_weights")
        for k, name in enumerate(self.object_names):
            outputs[f"weight_{name}"] = weights[..., k : k + 1]
        return {key: value for key, value in outputs.items() if key not in RAY_ONLY_OUTPUTS}

    def object_weights_image(self, outputs: Dict[str, Tensor]) -> Float[Tensor, "H W K"]:
        """[H, W, K] composite weight of every object, from an image's ``weight_<name>`` outputs."""
        return torch.cat([outputs[f"weight_{name}"] for name in self.object_names], dim=-1)

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """PSNR, SSIM and LPIPS (when its weights are on disk) of colour; depth errors and segmentation scores
        where the batch has ground truth. A ``covisibility_mask`` [H, W, 1] in the batch (nonzero = scored)
        restricts every metric to its pixels."""
        device = outputs["rgb"].device
        image = batch["image"][..., :3].to(device)
        rgb = outputs["rgb"].clamp(0, 1)
        valid = batch["covisibility_mask"][..., 0].to(device) != 0 if "covisibility_mask" in batch else None
        metrics = {"psnr": metrics_lib.psnr(rgb, image, valid), "ssim": metrics_lib.ssim(rgb, image, valid)}
        network, _ = metrics_lib.load_lpips()
        if network is not None:
            metrics["lpips"] = metrics_lib.lpips(rgb, image, network.to(device), valid)
        if "gt_depth" in batch:
            depth_errors = metrics_lib.median_aligned_depth_errors(
                outputs["z_depth"][..., 0], batch["gt_depth"][..., 0].to(device), valid
            )
            metrics.update({f"depth_{k}": v for k, v in depth_errors.items()})
        if "object_id" in batch:
            predicted, target = self.object_weights_image(outputs).argmax(-1), batch["object_id"][..., 0].to(device)
            metrics["miou"] = metrics_lib.mean_iou(predicted, target, self.num_objects, valid)
            metrics["pq"] = metrics_lib.panoptic_quality(predicted, target, self.num_objects, valid)
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
            "segmentation": outputs["segmentation"],
        }
        return metrics, images


TRAINING_DRAWS_SEED = 1 << 40
"""Offset of the seeds of training-configuration draws (one per step) from the refits' seeds (the step)."""

RAY_ONLY_OUTPUTS = (
    "alone_rgb",
    "alone_depth",
    "alone_accumulation",
    "scales",
    "directions_norm",
    "present",
    "alone_distortion",
)
"""Outputs of ``get_outputs`` that only the losses use (per-object stacks and per-ray bookkeeping); images of a
camera leave them out."""


def object_extents(meta: OSNSceneMetadata) -> List[ObjectExtent]:
    """Each object's box size and typical camera distance (median keypoint depth), in its own units."""
    extents = []
    for k in range(meta.num_objects):
        depths = meta.keypoint_depth[meta.keypoint_object == k]
        size = (meta.bbox_max[k] - meta.bbox_min[k]).tolist()
        distance = float(depths.median()) if len(depths) else max(size)
        extents.append(ObjectExtent(box_size=tuple(size), distance=distance))
    return extents


def time_to_frame(times: Float[Tensor, " R"], frame_times: Float[Tensor, " F"]) -> Float[Tensor, " R"]:
    """Fractional frame index of normalised times (piecewise linear between frame times)."""
    if frame_times.numel() == 1:
        return torch.zeros_like(times)
    times = times.clamp(float(frame_times[0]), float(frame_times[-1]))
    upper = torch.searchsorted(frame_times, times.contiguous()).clamp(1, frame_times.numel() - 1)
    lower = upper - 1
    span = (frame_times[upper] - frame_times[lower]).clamp_min(1e-12)
    return lower.float() + (times - frame_times[lower]) / span


def zero_non_finite(gradient: Tensor) -> Tensor:
    """Gradient hook: a rare non-finite gradient entry becomes 0 instead of poisoning Adam's state for good."""
    return torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)


def alone_colour_error(
    rgb: Float[Tensor, "R 3"], accumulation: Float[Tensor, " R"], target: Float[Tensor, "R 3"]
) -> Float[Tensor, " R"]:
    """Colour error of an object rendered alone (``rgb`` without background, opacity ``accumulation``) on pixels
    that show it: its samples' colour error weighted by their opacity, ``|rgb - accumulation * target|^2``, plus
    what the opacity it lacks costs over black, ``(1 - accumulation)^2 |target|^2``.

    This is ``|rgb - target|^2`` without its cross term, through which a half-transparent object lowers the error
    by brightening its colour past the pixel's: early in the bootstrap that drives the colour MLP's sigmoid into
    saturation, where its gradient is exactly zero in float32 and the object keeps a flat wrong colour for good.
    """
    colour = (rgb - accumulation[:, None] * target).pow(2).sum(-1)
    return colour + (1.0 - accumulation).pow(2) * target.pow(2).sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def weighted_relative_error(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean weighted |prediction - target| / target over rays with weight > 0 (unit-free across objects)."""
    relative = (prediction - target).abs() / target.clamp_min(1e-6)
    return (relative * weight).sum() / weight.sum().clamp_min(1e-6)
