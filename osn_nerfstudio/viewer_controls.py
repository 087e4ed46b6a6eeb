"""ns-viewer controls of an ``osn`` run: a scale slider per foreground object, sampling, ground truth, read-outs.

How nerfstudio 1.1.5's viewer finds them (``nerfstudio/viewer/viewer.py``, ``viewer/utils.py: parse_object``): it
walks the pipeline's public attributes, recursing only into ``nn.Module`` attributes, and installs every
``ViewerElement`` it meets under "Custom Elements", in alphabetical order of attribute name; it wraps each element's
callback so that the view re-renders after it (holding the training lock while training). It calls ``_setup(viewer)``
of every ``ViewerControl`` it meets the same way. :func:`attach_viewer_controls` therefore puts the elements on the
pipeline under names that sort in display order.

The render configuration is the model's ``render_scales`` buffer (every non-training render uses it); the sliders
write it and are moved to it, also when a refit during training picks a new one. Exact validity needs every object
rendered alone on the supervision rays: that cache is built on first use and rebuilt only after training has moved
on by a round (``steps_per_round`` steps).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerControl, ViewerElement, ViewerSlider, ViewerText

from osn_nerfstudio.core.valid_set import ValidSet
from osn_nerfstudio.core.validity import ValidityPlan, plan_validity, score_plan
from osn_nerfstudio.validity_labels import ValidityLabels, label_validity

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

def slider_step(low: float, high: float) -> float:
    """A power of ten that divides the range into 100 to 1000 steps."""
    return 10.0 ** math.floor(math.log10((high - low) / 100.0))


def scales_from_sliders(values: Sequence[float], scale_range: Float[Tensor, "K 2"]) -> Float[Tensor, " K"]:
    """The configuration of slider values (one per foreground object), clamped to the ranges; the background is 1."""
    foreground = torch.tensor([float(v) for v in values], dtype=scale_range.dtype, device=scale_range.device)
    foreground = torch.minimum(torch.maximum(foreground, scale_range[1:, 0]), scale_range[1:, 1])
    return torch.cat([foreground.new_ones(1), foreground])


def sliders_from_scales(scales: Float[Tensor, " K"], scale_range: Float[Tensor, "K 2"]) -> List[float]:
    """Slider values (foreground objects) of a configuration, clamped to the sliders' ranges."""
    clamped = torch.minimum(torch.maximum(scales[1:].to(scale_range), scale_range[1:, 0]), scale_range[1:, 1])
    return [float(v) for v in clamped]


def closest_to_truth(
    true_scales: Float[Tensor, " K"], scale_range: Float[Tensor, "K 2"]
) -> Optional[Float[Tensor, " K"]]:
    """The configuration within the scale ranges closest to the true scales (the truth itself when it lies inside);
    None when the scene does not know them."""
    if torch.isnan(true_scales).any():
        return None
    return scales_from_sliders(sliders_from_scales(true_scales, scale_range), scale_range)


def readout_texts(osn_score: float, explained: float, margin: float) -> Tuple[str, str]:
    """Texts of the two read-outs: the scale network's probability, and the fraction of supervision rays explained
    with the verdict of the rule training labels with (``margin``: :meth:`ValidSet.margins`, >= 0 when valid)."""
    network = f"{osn_score:.3f} > 0.5: valid" if osn_score > 0.5 else f"{osn_score:.3f} ≤ 0.5: invalid"
    if margin >= 0:
        return network, f"{explained:.3f} explained: valid"
    return network, f"{explained:.3f} explained: invalid ({-margin:.3f} past a bound)"


@dataclass
class ViewerCamera:
    """A viewer (viser) camera: world units times the viewer's scale ratio."""

    position: Tuple[float, float, float]
    look_at: Tuple[float, float, float]
    up_direction: Tuple[float, float, float]
    fov: float
    """Vertical field of view, radians."""


def camera_view(
    camera_to_world: Float[Tensor, "3 4"], fy: float, cy: float, look_distance: float, behind: float, scale_ratio: float
) -> ViewerCamera:
    """A viewer camera ``behind`` world units behind a nerfstudio camera (OpenGL axes: looks along -z, y up),
    looking at the point ``look_distance`` in front of it, with its vertical field of view."""
    rotation, centre = camera_to_world[:, :3].double(), camera_to_world[:, 3].double()
    position = (centre + rotation[:, 2] * behind) * scale_ratio
    look_at = (centre - rotation[:, 2] * look_distance) * scale_ratio
    return ViewerCamera(
        position=tuple(position.tolist()),
        look_at=tuple(look_at.tolist()),
        up_direction=tuple(rotation[:, 1].tolist()),
        fov=2.0 * math.atan(cy / fy),
    )


@dataclass
class ValidityReference:
    """What judging a configuration needs, computed once per supervision cache."""

    plan: ValidityPlan
    valid: ValidSet
    """The configurations the training labels' rule calls valid on this cache."""
    training_round: int
    """``round_of(model)`` when the cache was rendered."""

    def explained(self, scales: Float[Tensor, " K"]) -> float:
        # in the scales' own precision, as ``validity(cache, scales[None], ...)`` scores them
        return float(score_plan(self.plan, scales.detach().cpu()[None])[0])

    def margin(self, scales: Float[Tensor, " K"]) -> float:
        return float(self.valid.margins(scales.detach().cpu()[None])[0])


def validity_reference(model, labels: ValidityLabels) -> ValidityReference:
    plan = plan_validity(labels.cache, model.config.validity.min_accumulation)
    return ValidityReference(plan, labels.valid, round_of(model))


def round_of(model) -> int:
    """Training progress in rounds of ``steps_per_round`` steps: the validity cache is rebuilt when it changes (on
    every slider move it would hold training up for a second each time)."""
    return model.step // model.config.steps_per_round


class ScaleSlider(ViewerSlider[float]):
    """A slider whose end marks show its range (viser's default marks print them as integers: 0.02 becomes 0)."""

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_slider(
            self.name,
            self.min,
            self.max,
            self.step,
            self.default_value,
            marks=((self.min, f"{self.min:.3g}"), (self.max, f"{self.max:.3g}")),
            disabled=self.disabled,
            visible=self.visible,
            hint=self.hint,
        )


class ReadoutText(ViewerText):
    """A read-only text: the program sets it, and setting it calls nothing (no re-render)."""

    def __init__(self, name: str, hint: str) -> None:
        super().__init__(name, "", disabled=True, hint=hint)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)


class OSNViewerControls(ViewerControl):
    """The viewer elements of an OSN pipeline and their callbacks (docs/viewer.md)."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        model = pipeline.model
        ranges = model.scale_range.cpu()
        start = sliders_from_scales(model.render_scales.cpu(), ranges)
        self.scale_sliders: List[ScaleSlider] = [
            ScaleSlider(
                f"{name} scale",
                start[k - 1],
                float(ranges[k, 0]),
                float(ranges[k, 1]),
                slider_step(float(ranges[k, 0]), float(ranges[k, 1])),
                cb_hook=self.scale_callback(k),
                hint=f"Scale of {name} relative to the background, within its range "
                f"[{float(ranges[k, 0]):.4g}, {float(ranges[k, 1]):.4g}]",
            )
            for k, name in enumerate(model.object_names)
            if k > 0
        ]
        self.sample_button = ViewerButton(
            "Sample valid configuration", cb_hook=lambda _: self.sample_configuration()
        )
        self.truth_button: Optional[ViewerButton] = None
        if closest_to_truth(model.true_scales.cpu(), ranges) is not None:
            self.truth_button = ViewerButton("Closest to ground truth", cb_hook=lambda _: self.show_ground_truth())
        self.osn_readout = ReadoutText("OSN score", "The scale network's probability that this configuration is valid")
        self.validity_readout = ReadoutText(
            "Exact validity",
            "Weighted fraction of supervision rays whose Z-buffer winner is the object the video shows there, and the "
            "verdict of the rule the training labels with",
        )
        self.generator = torch.Generator().manual_seed(0)
        self.reference: Optional[ValidityReference] = None
        self.lock = threading.RLock()

    @property
    def model(self):
        return self.pipeline.model

    def named_elements(self) -> List[Tuple[str, ViewerElement]]:
        """Pipeline attribute names (sorting in display order) and elements."""
        elements: List[ViewerElement] = [*self.scale_sliders, self.sample_button]
        if self.truth_button is not None:
            elements.append(self.truth_button)
        elements += [self.osn_readout, self.validity_readout]
        return [(f"osn_viewer_{i:02d}", element) for i, element in enumerate(elements)]

    def _setup(self, viewer: Viewer) -> None:
        """Called by the viewer once its elements are installed: show the configuration, place new browsers' views."""
        super()._setup(viewer)
        self.show_configuration(self.model.render_scales.detach().clone())
        viewer.viser_server.on_client_connect(self.look_from_first_frame)

    def look_from_first_frame(self, client) -> None:
        """Open a new browser view on the video's first frame, where every object is in sight.

        Slightly behind that frame's camera: exactly there, the viewer's picture of the training image (its camera
        frustum) would cover the whole view.
        """
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        camera = self.pipeline.datamanager.train_dataset.cameras[0]
        near, far = self.model.depth_bounds.tolist()
        middle = 0.5 * (near + far)
        view = camera_view(
            camera.camera_to_worlds,
            float(camera.fy),
            float(camera.cy),
            middle,
            0.2 * middle,
            VISER_NERFSTUDIO_SCALE_RATIO,
        )
        with client.atomic():
            client.camera.fov = view.fov
            client.camera.up_direction = view.up_direction
            client.camera.position = view.position
            client.camera.look_at = view.look_at

    # ---------------------------------------------------------------- callbacks

    def scale_callback(self, k: int) -> Callable[[ViewerSlider], None]:
        def on_change(slider: ViewerSlider) -> None:
            with self.lock:
                low, high = self.model.scale_range[k].tolist()
                self.model.render_scales[k] = min(max(float(slider.value), low), high)
                self.update_readouts()

        return on_change

    def sample_configuration(self) -> None:
        """Draw one configuration from the scale network's valid region and show it."""
        result = self.model.scale_network.sample(1, generator=self.generator)
        if result.fell_back:
            CONSOLE.print(f"[yellow]Sample valid configuration: {result.message}")
        self.show_configuration(result.scales[0])

    def show_ground_truth(self) -> None:
        truth = closest_to_truth(self.model.true_scales.cpu(), self.model.scale_range.cpu())
        if truth is not None:
            self.show_configuration(truth)

    def show_configuration(self, scales: Float[Tensor, " K"]) -> None:
        """Render at ``scales`` (clamped to the ranges) and move the sliders there."""
        with self.lock:
            ranges = self.model.scale_range
            values = sliders_from_scales(scales, ranges)
            self.model.render_scales.copy_(scales_from_sliders(values, ranges))
            # each slider's callback then writes the value it already holds
            for slider, value in zip(self.scale_sliders, values):
                slider.value = value
            self.update_readouts()

    def follow_render_scales(self) -> None:
        """Move the sliders and read-outs to the model's render configuration, after a refit chose a new one during
        training; nothing when no viewer runs (the read-outs would render the supervision cache for nobody)."""
        if getattr(self, "viewer", None) is None:
            return
        self.show_configuration(self.model.render_scales.detach().clone())

    # ---------------------------------------------------------------- read-outs

    def update_readouts(self) -> None:
        self.osn_readout.value, self.validity_readout.value = self.readouts(self.model.render_scales)

    @torch.no_grad()
    def readouts(self, scales: Float[Tensor, " K"]) -> Tuple[str, str]:
        osn_score = float(self.model.scale_network.probability(scales.to(self.model.scale_range)[None])[0])
        reference = self.validity_reference()
        return readout_texts(osn_score, reference.explained(scales), reference.margin(scales))

    def validity_reference(self) -> ValidityReference:
        """The cached validity reference, rebuilt when training has moved on by a round since it was rendered."""
        with self.lock:
            if self.reference is None or self.reference.training_round != round_of(self.model):
                self.reference = self.build_reference()
            return self.reference

    def build_reference(self) -> ValidityReference:
        model = self.model
        with model.evaluating():
            labels = label_validity(model, self.pipeline.datamanager, torch.Generator().manual_seed(0))
        return validity_reference(model, labels)


def attach_viewer_controls(pipeline) -> OSNViewerControls:
    """Build the controls of an OSN pipeline and put their elements on it, where the viewer finds them."""
    controls = OSNViewerControls(pipeline)
    for name, element in controls.named_elements():
        setattr(pipeline, name, element)
    return controls
