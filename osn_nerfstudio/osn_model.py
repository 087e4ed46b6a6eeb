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

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import track

from osn_nerfstudio.core import metrics as metrics_lib
from osn_nerfstudio.core.compositing import (
    AloneOutputs,
    CompositeOutputs,
    ObjectSamples,
    composite,
    distortion,
    render_alone,
)
from osn_nerfstudio.core.geometry import interpolate_poses, intersect_aabb, normalise_to_box, rays_in_objects
from osn_nerfstudio.core.validity import (
    LabelledSet,
    SupervisionCache,
    ValidityConfig,
    labelled_candidates,
    valid_set,
)
from osn_nerfstudio.data.osn_datamanager import concat_bundles, random_rows
from osn_nerfstudio.data.osn_dataparser import METADATA_KEY, OSNSceneMetadata
from osn_nerfstudio.fields.object_fields import ObjectExtent, ObjectFields, ObjectFieldsConfig
from osn_nerfstudio.scale_network import ObjectScaleNetwork, ScaleNetworkConfig


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
    supervision_pixels_per_object: int = 4096
    """Mask pixels per object added to all keypoints to form the rays that decide validity (caching 28k rays
    costs about a second on a 2-core CPU)."""
    supervision_boundary_pixels_per_object: int = 1024
    """Extra supervision pixels per object next to another object, where the video shows which of the two is in
    front; uniform mask pixels rarely land there."""
    supervision_boundary_width: int = 3
    """Pixels from another object that count as next to it."""
    supervision_label_gap: int = 2
    """Supervision pixels keep this many pixels from any other label: masks and learned silhouettes are least
    certain on their outlines (benchmarks/RESULTS.md: 1 pixel excluded the truth on an indoor scene)."""
    supervision_hidden_pixels_per_pair: int = 0
    """Supervision pixels per (shown, hidden) pair of objects where a foreground object is hidden behind what the
    video shows (found by rendering it alone where its box lies). 0: none (they excluded the truth indoors)."""
    supervision_hidden_candidates: int = 1024
    """Pixels per frame and foreground object searched for it hiding behind another (drawn inside its box)."""
    supervision_hidden_gap: int = 3
    """Hidden-object pixels keep this many pixels from the object's own visible pixels: a learned silhouette
    bleeds past the mask's outline, which would read as the object hidden behind its neighbour."""
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    """Which configurations the refits label valid, and which candidates they label."""
    rgb_loss_mult: float = 1.0
    """Colour loss of composite renders (phase 2)."""
    alone_rgb_loss_mult: float = 1.0
    """Colour loss of the labelled object rendered alone (phase 1; scaled by ``alone_loss_phase2`` after)."""
    alone_accumulation_loss_mult: float = 0.1
    """Pushes the labelled object's opacity to 1 where it is visible."""
    carving_loss_mult: float = 0.01
    """Pushes every foreground object's opacity alone towards 0 on the pixels of other objects. Weak: a part hidden
    in some frames is kept by the frames that show it; fog that no frame shows is carved away (it would otherwise
    contradict the occlusions that validity reads)."""
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
        self.fields = ObjectFields(self.num_objects, self.config.fields, object_extents(meta), meta.focal)
        for parameter in self.fields.parameters():
            parameter.register_hook(zero_non_finite)
        self.scale_network = ObjectScaleNetwork(meta.scale_range, self.config.scale_network)
        self.coarse_sampler = UniformSampler(num_samples=self.config.num_coarse_samples)
        self.fine_sampler = PDFSampler(num_samples=self.config.num_fine_samples, include_original=True)
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

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        pipeline = training_callback_attributes.pipeline

        def before_step(step: int) -> None:
            self.step = step
            if self.phase(step) == "alternation":
                drawn = self.scale_network.sample(self.config.configurations_per_batch)
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

    def frame_positions(self, ray_bundle: RayBundle) -> Float[Tensor, "R"]:
        """Fractional frame of every ray: camera metadata, else its time, else ``render_frame``."""
        num_rays = ray_bundle.origins.shape[0]
        if "frame_index" in ray_bundle.metadata:
            return ray_bundle.metadata["frame_index"][:, 0].float()
        if ray_bundle.times is not None:
            return time_to_frame(ray_bundle.times[:, 0], self.frame_times)
        return torch.full((num_rays,), self.config.render_frame, device=ray_bundle.origins.device)

    def sample_objects(
        self,
        ray_bundle: RayBundle,
        scales: Float[Tensor, "R K"],
        active: Optional[Bool[Tensor, "R K"]] = None,
        clip_near: bool = True,
    ) -> Tuple[ObjectSamples, Bool[Tensor, "R K"]]:
        """Samples of every object inside its box along every ray, with the fields evaluated there, and whether each
        object is present on each ray (registered in a frame next to the ray's).

        Only (ray, object) pairs where the ray meets the object's box (and ``active`` allows) are evaluated;
        the others get zero density. With ``clip_near`` nothing is sampled closer to the camera than the
        scene's near bound at ``scales``; renders of objects alone in their own units (the bootstrap, the
        validity cache) must not clip, since their own units say nothing about the scene's near bound.
        """
        num_rays, K = ray_bundle.origins.shape[0], self.num_objects
        origins, directions, nears, fars, hit, present = self.rays_in_boxes(ray_bundle, scales, clip_near)
        if active is not None:
            hit = hit & active
        # pairs ordered by object, so that each object's samples are one contiguous block for its field
        objects, rays = torch.nonzero(hit.T, as_tuple=True)
        pair_rays = RayBundle(
            origins=origins[rays, objects],
            directions=directions[rays, objects],
            pixel_area=torch.ones(len(rays), 1, device=origins.device),
            nears=nears[rays, objects, None],
            fars=fars[rays, objects, None],
        )
        # the background's pairs come first (pairs are in object order), and may have their own sample budget
        num_background = int((objects == 0).sum())
        groups = [
            (slice(0, num_background), self.config.background_coarse_samples, self.config.background_fine_samples),
            (slice(num_background, len(objects)), None, None),
        ]
        blocks = [self.sample_in_boxes(pair_rays[part], objects[part], coarse, fine) for part, coarse, fine in groups]
        width = max(block[0].shape[-1] for block in blocks)
        starts, ends, density, rgb = (torch.cat([pad_samples(block[i], width) for block in blocks]) for i in range(4))
        # every pair's samples go to its (ray, object) slot of the dense [R, K, N] layout; the rest stay empty
        slots, num_slots = rays * K + objects, num_rays * K
        object_samples = ObjectSamples(
            starts=to_slots(starts, slots, num_slots).view(num_rays, K, -1),
            ends=to_slots(ends, slots, num_slots).view(num_rays, K, -1),
            density=to_slots(density, slots, num_slots).view(num_rays, K, -1),
            rgb=to_slots(rgb, slots, num_slots).view(num_rays, K, -1, 3),
        )
        return object_samples, present

    def rays_in_boxes(self, ray_bundle: RayBundle, scales: Float[Tensor, "R K"], clip_near: bool):
        """Every ray in every object's frame and units (origins, directions [R, K, 3]), where it enters and leaves the
        object's box (nears, fars [R, K]), whether it meets the box of a present object (hit [R, K]), and whether the
        object is present (registered next to the ray's frame)."""
        poses, present = interpolate_poses(self.camera_to_object, self.registered, self.frame_positions(ray_bundle))
        origins, directions = rays_in_objects(ray_bundle.origins, ray_bundle.directions, poses[:, 0], poses, scales)
        nears, fars, hit = intersect_aabb(origins, directions, self.bbox_min.expand_as(origins), self.bbox_max.expand_as(origins))
        if clip_near:  # nothing sits closer to the camera than the scene's near bound, whatever its scale
            nears = torch.maximum(nears, self.depth_bounds[0] / scales)
        return origins, directions, nears, fars, hit & present & (fars > nears), present

    def sample_in_boxes(
        self, pair_rays: RayBundle, objects: Tensor, num_coarse: Optional[int] = None, num_fine: Optional[int] = None
    ) -> Tuple[Float[Tensor, "P N"], Float[Tensor, "P N"], Float[Tensor, "P N"], Float[Tensor, "P N 3"]]:
        """Stratified samples inside each ray's object box, then PDF samples from their weights; fields at all of them.

        ``pair_rays`` are rays in object space grouped by object (``objects`` [P], non-decreasing): nerfstudio's
        samplers run once on all of them, each object's field once on its block. Returns every sample's interval
        (starts, ends), density and colour; ``num_coarse`` and ``num_fine`` (None: the config's) set the budget.
        """
        num_coarse = num_coarse or self.config.num_coarse_samples
        num_fine = num_fine or self.config.num_fine_samples
        if len(objects) == 0:
            empty = pair_rays.origins.new_zeros(0, num_coarse + num_fine + 1)
            return empty, empty, empty, empty[..., None].expand(-1, -1, 3)
        counts = torch.bincount(objects, minlength=self.num_objects).tolist()
        coarse = self.coarse_sampler(pair_rays, num_samples=num_coarse)
        # the PDF sampler detaches its bins, so the coarse densities never need gradients
        with torch.no_grad():
            coarse_density = self.object_densities(self.unit_points(objects, coarse.frustums.get_positions()), counts)
        fine = self.fine_sampler(pair_rays, coarse, coarse.get_weights(coarse_density[..., None]), num_samples=num_fine)
        # one direction per ray: the fields encode it once for all the ray's samples
        density, rgb = self.object_radiance(
            self.unit_points(objects, fine.frustums.get_positions()), pair_rays.directions[:, None, :], counts
        )
        return fine.frustums.starts[..., 0], fine.frustums.ends[..., 0], density, rgb

    def object_densities(self, points: Float[Tensor, "P N 3"], counts: List[int]) -> Float[Tensor, "P N"]:
        """Each object's density at its block of pairs (``counts`` pairs per object, in object order)."""
        blocks = [self.fields.object_density(k, object_points) for k, object_points in object_blocks(points, counts)]
        return torch.cat(blocks) if blocks else points.new_zeros(points.shape[:-1])

    def object_radiance(
        self, points: Float[Tensor, "P N 3"], directions: Float[Tensor, "P 1 3"], counts: List[int]
    ) -> Tuple[Float[Tensor, "P N"], Float[Tensor, "P N 3"]]:
        """Each object's density and colour at its block of pairs (``counts`` pairs per object, in object order)."""
        evaluated = [
            self.fields.object_forward(k, object_points, object_directions)
            for (k, object_points), (_, object_directions) in zip(
                object_blocks(points, counts), object_blocks(directions, counts)
            )
        ]
        if not evaluated:
            return points.new_zeros(points.shape[:-1]), points.new_zeros(*points.shape[:-1], 3)
        return torch.cat([density for density, _ in evaluated]), torch.cat([rgb for _, rgb in evaluated])

    def unit_points(self, objects: Tensor, positions: Float[Tensor, "P N 3"]) -> Float[Tensor, "P N 3"]:
        """Positions of each pair's samples in its object's unit box ``objects`` [P]."""
        return normalise_to_box(positions, self.bbox_min[objects, None], self.bbox_max[objects, None]).clamp(0.0, 1.0)

    def scales_per_ray(self, num_rays: int, device) -> Float[Tensor, "R K"]:
        if self.training:
            groups = self.train_scales.shape[0]
            return self.train_scales[torch.arange(num_rays, device=device) % groups]
        return self.render_scales.expand(num_rays, -1)

    def get_outputs(self, ray_bundle: RayBundle, active: Optional[Tensor] = None, clip_near: bool = True) -> Dict[str, Tensor]:
        num_rays = ray_bundle.origins.shape[0]
        scales = self.scales_per_ray(num_rays, ray_bundle.origins.device)
        samples, present = self.sample_objects(ray_bundle, scales, active, clip_near)
        mixed = composite(samples, scales, self.background)
        alone = render_alone(samples)
        outputs = {**self.collect_outputs(ray_bundle, scales, mixed, alone), "present": present}
        if self.training and self.config.distortion_loss_mult > 0:
            diagonal = (self.bbox_max - self.bbox_min).norm(dim=-1)
            outputs["alone_distortion"] = distortion(alone.weights, samples.starts, samples.ends) / diagonal
        return outputs

    def get_training_outputs(self, ray_bundle: RayBundle, batch: Dict) -> Dict[str, Tensor]:
        """Training forward pass: during the bootstrap each ray renders its labelled object and the foreground
        objects (for carving), each alone in its own units."""
        if self.phase(self.step) != "bootstrap":
            return self.get_outputs(ray_bundle)
        labels = batch["object_id"][:, 0].to(ray_bundle.origins.device).long()
        active = F.one_hot(labels.clamp_min(0), self.num_objects).bool()
        if self.config.carving_loss_mult > 0:
            active[:, 1:] = True
        return self.get_outputs(ray_bundle, active & (labels >= 0)[:, None], clip_near=False)

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
        known = (labels >= 0) & outputs["present"].gather(1, label_index)[:, 0]
        directions_norm = outputs["directions_norm"][:, 0]
        # keypoint z-depth (own units) as a distance along the unit-length object-space ray
        kp_distance = kp_depth * directions_norm

        alone_rgb = outputs["alone_rgb"].gather(1, label_index[..., None].expand(-1, 1, 3))[:, 0]
        alone_acc = outputs["alone_accumulation"].gather(1, label_index)[:, 0]
        alone_depth = outputs["alone_depth"].gather(1, label_index)[:, 0]
        losses = {
            "alone_rgb": masked_mean((alone_rgb - image).pow(2).sum(-1), known) * self.config.alone_rgb_loss_mult,
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
            share = outputs["object_weights"].gather(1, label_index)[:, 0] / outputs["accumulation"][:, 0].clamp_min(1e-6)
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

    def supervision_cache_of(self, datamanager, generator: torch.Generator, progress: bool = False) -> SupervisionCache:
        """The cache of a fresh draw of the datamanager's supervision rays (the model's sampling settings); with
        ``progress``, a progress bar shows the rendering."""
        rays, labels, weights = datamanager.supervision_rays(
            self.config.supervision_pixels_per_object,
            generator,
            self.config.supervision_boundary_pixels_per_object,
            self.config.supervision_boundary_width,
            self.config.supervision_label_gap,
        )
        if self.config.supervision_hidden_pixels_per_pair > 0:
            hidden_rays, hidden_labels = self.hidden_object_rays(datamanager, generator)
            rays = concat_bundles(rays, hidden_rays)
            labels, weights = torch.cat([labels, hidden_labels]), torch.cat([weights, torch.ones(len(hidden_labels))])
        return self.supervision_cache(rays, labels, weights, progress=progress)

    @torch.no_grad()
    def hidden_object_rays(self, datamanager, generator: torch.Generator) -> Tuple[RayBundle, Tensor]:
        """Supervision pixels where a foreground object lies hidden behind the object the video shows: the tightest
        evidence of which of two objects is in front, and rare among uniform pixels.

        In every frame, for every foreground object k, up to ``supervision_hidden_candidates`` pixels whose ray meets
        k's box but that show another object, at least ``supervision_hidden_gap`` pixels from any pixel showing k, are
        drawn; k is rendered alone on them, and those where it is opaque
        (accumulation above the validity rule's ``min_accumulation``) are kept, up to
        ``supervision_hidden_pixels_per_pair`` per (shown, hidden) pair. Returns the rays and their labels.
        """
        labels = datamanager.supervising_labels(self.config.supervision_label_gap)
        gap = self.config.supervision_hidden_gap
        num_frames, height, width = labels.shape
        found: Dict[Tuple[int, int], List[Tensor]] = {}
        ones = torch.ones(1, self.num_objects, device=self.bbox_min.device)
        for frame in range(num_frames):
            flat = labels[frame].reshape(-1)
            pixels = torch.arange(len(flat))
            rays = datamanager.pixel_rays(torch.full_like(pixels, frame), pixels // width, pixels % width)
            hits = self.rays_in_boxes(rays, ones.expand(len(rays), -1), clip_near=False)[4].cpu()
            for k in range(1, self.num_objects):
                away = ~datamanager.near_object(frame, k, gap).reshape(-1) if gap > 0 else True
                candidates = ((flat >= 0) & (flat != k) & hits[:, k] & away).nonzero()[:, 0]
                candidates = random_rows(candidates, self.config.supervision_hidden_candidates, generator)
                if len(candidates) == 0:
                    continue
                alone = F.one_hot(torch.full((len(candidates),), k), self.num_objects).bool().to(ones.device)
                samples, _ = self.sample_objects(rays[candidates.to(ones.device)], ones.expand(len(candidates), -1), alone, False)
                opaque = candidates[render_alone(samples).accumulation[:, k].cpu() > self.config.validity.min_accumulation]
                for shown in flat[opaque].unique().tolist():
                    found.setdefault((shown, k), []).append(frame * height * width + opaque[flat[opaque] == shown])
        picks = [random_rows(torch.cat(p), self.config.supervision_hidden_pixels_per_pair, generator) for p in found.values()]
        picks = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
        frame, pixel = picks // (height * width), picks % (height * width)
        return datamanager.pixel_rays(frame, pixel // width, pixel % width), labels[frame, pixel // width, pixel % width]

    @torch.no_grad()
    def supervision_cache(
        self, ray_bundle: RayBundle, labels: Tensor, weights: Tensor, chunk: int = 4096, progress: bool = False
    ) -> SupervisionCache:
        """Every object rendered alone on the supervision rays: own-unit depth and accumulation."""
        depths, accs = [], []
        ones = torch.ones(1, self.num_objects, device=self.bbox_min.device)
        starts = range(0, len(ray_bundle), chunk)
        if progress:
            starts = track(starts, description="Rendering every object alone on the supervision rays", console=CONSOLE)
        for start in starts:
            rays = ray_bundle[start : start + chunk].to(self.bbox_min.device)
            alone = render_alone(self.sample_objects(rays, ones.expand(len(rays), -1), clip_near=False)[0])
            depths.append(alone.depth)
            accs.append(alone.accumulation)
        return SupervisionCache(
            depth=torch.cat(depths).cpu(), acc=torch.cat(accs).cpu(), label=labels.long().cpu(), weight=weights.float().cpu()
        )

    def refit_scale_network(self, datamanager, step: int) -> Dict[str, float]:
        """Refresh the cache, find the configurations the validity rule labels valid, and fit the scale network to
        candidates labelled by it."""
        if self.num_objects < 2:
            return {}
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(step)
        cache = self.supervision_cache_of(datamanager, generator)
        self.train(was_training)
        labelled = self.valid_set(cache)
        u, labels = labelled_candidates(labelled.valid, self.scale_network.ranges, self.config.validity, generator)
        device = self.bbox_min.device
        self.scale_network.set_input_frame(u[labels].to(device))
        stats = self.scale_network.fit(u.to(device), labels.to(device), generator=generator)
        self.scale_network.set_proposal(labelled.valid)
        fallbacks, self.sampling_fallbacks = self.sampling_fallbacks, 0
        self.choose_render_scales(cache)
        share = labelled.contradicted_weight / max(labelled.constraint_weight, 1e-12)
        CONSOLE.print(
            f"step {step}: scale network refit on {cache.num_rays} rays ({labelled.constraint_weight:.0f} constraints, "
            f"{share:.1%} set aside as contradicted); {int(labels.sum())}/{len(labels)} candidates valid; fit balanced "
            f"accuracy {stats['balanced_accuracy']:.3f}"
            + (f"; {fallbacks} training draws fell back since the last refit" if fallbacks else "")
            + f"; render scales {[round(s, 3) for s in self.render_scales.tolist()]}"
        )
        return {"valid_fraction": float(labels.float().mean()), "contradicted_share": share, **stats}

    def valid_set(self, cache: SupervisionCache) -> LabelledSet:
        """What the validity rule labels valid on ``cache`` (``.valid``), with what it set aside."""
        return valid_set(cache, self.scale_range.cpu(), self.config.validity)

    @torch.no_grad()
    def choose_render_scales(self, cache: SupervisionCache, num_samples: int = 100) -> None:
        """Render at the sampled valid configuration closest to the truth (log space) when it is known."""
        sampled = self.scale_network.sample(num_samples).scales.to(self.render_scales.device)
        if torch.isnan(self.true_scales).any():
            self.render_scales.copy_(sampled[0])
            return
        distance = (sampled.log() - self.true_scales.log()).abs().amax(-1)
        self.render_scales.copy_(sampled[distance.argmin()])

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
            depth_errors = metrics_lib.median_aligned_depth_errors(outputs["z_depth"][..., 0], batch["gt_depth"][..., 0].to(device), valid)
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


RAY_ONLY_OUTPUTS = ("alone_rgb", "alone_depth", "alone_accumulation", "scales", "directions_norm", "present", "alone_distortion")
"""Outputs of ``get_outputs`` that only the losses use (per-object stacks and per-ray bookkeeping); images of a
camera leave them out."""


def object_extents(meta: OSNSceneMetadata) -> List[ObjectExtent]:
    """Each object's box size and typical camera distance (median keypoint depth), in its own units."""
    extents = []
    for k in range(meta.num_objects):
        depths = meta.keypoint_depth[meta.keypoint_object == k]
        size = (meta.bbox_max[k] - meta.bbox_min[k]).tolist()
        extents.append(ObjectExtent(box_size=tuple(size), distance=float(depths.median()) if len(depths) else max(size)))
    return extents


def time_to_frame(times: Float[Tensor, "R"], frame_times: Float[Tensor, "F"]) -> Float[Tensor, "R"]:
    """Fractional frame index of normalised times (piecewise linear between frame times)."""
    if frame_times.numel() == 1:
        return torch.zeros_like(times)
    times = times.clamp(float(frame_times[0]), float(frame_times[-1]))
    upper = torch.searchsorted(frame_times, times.contiguous()).clamp(1, frame_times.numel() - 1)
    lower = upper - 1
    span = (frame_times[upper] - frame_times[lower]).clamp_min(1e-12)
    return lower.float() + (times - frame_times[lower]) / span


def object_blocks(values: Tensor, counts: List[int]) -> List[Tuple[int, Tensor]]:
    """(object, its rows) of ``values`` grouped by object with ``counts`` rows each, skipping empty objects."""
    return [(k, block) for k, block in enumerate(values.split(counts)) if len(block) > 0]


def pad_samples(values: Float[Tensor, "P N *rest"], width: int) -> Float[Tensor, "P W *rest"]:
    """Samples padded with zeros to ``width`` per pair: empty samples (no density, no interval) change no render."""
    missing = width - values.shape[1]
    if missing == 0:
        return values
    return torch.cat([values, values.new_zeros(values.shape[0], missing, *values.shape[2:])], dim=1)


def to_slots(values: Float[Tensor, "P *rest"], slots: Tensor, num_slots: int) -> Float[Tensor, "S *rest"]:
    """Rows of ``values`` placed at rows ``slots`` of a zero tensor with ``num_slots`` rows.

    Out of place: its backward only gathers the rows' gradients (in-place writes into a zero tensor would
    copy and mask the whole gradient once per write).
    """
    return values.new_zeros(num_slots, *values.shape[1:]).index_copy(0, slots, values)


def zero_non_finite(gradient: Tensor) -> Tensor:
    """Gradient hook: a rare non-finite gradient entry becomes 0 instead of poisoning Adam's state for good."""
    return torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def weighted_relative_error(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean weighted |prediction - target| / target over rays with weight > 0 (unit-free across objects)."""
    relative = (prediction - target).abs() / target.clamp_min(1e-6)
    return (relative * weight).sum() / weight.sum().clamp_min(1e-6)
