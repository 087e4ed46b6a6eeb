"""The viewer controls' logic without a browser: a loaded tiny run, its elements, and their callbacks pressed
directly."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from osn_nerfstudio.viewer_controls import (
    camera_view,
    closest_to_truth,
    readout_texts,
    scales_from_sliders,
    slider_step,
    sliders_from_scales,
)

RANGES = torch.tensor([[1.0, 1.0], [0.02, 0.33], [0.5, 4.0]])


def test_slider_step_divides_the_range_into_100_to_1000_steps():
    for low, high in [(0.0215, 0.3276), (0.5, 4.0), (1.0, 1000.0), (0.001, 0.0015)]:
        steps = (high - low) / slider_step(low, high)
        assert 100 <= steps <= 1000, (low, high, steps)


def test_sliders_and_scales_round_trip_and_clamp_to_the_ranges():
    scales = scales_from_sliders([0.1, 2.0], RANGES)
    assert scales.tolist() == pytest.approx([1.0, 0.1, 2.0])
    assert sliders_from_scales(scales, RANGES) == pytest.approx([0.1, 2.0])
    assert scales_from_sliders([0.001, 9.0], RANGES).tolist() == pytest.approx([1.0, 0.02, 4.0])
    assert sliders_from_scales(torch.tensor([1.0, 1.0, 0.1]), RANGES) == pytest.approx([0.33, 0.5])


def test_closest_to_truth_is_the_truth_clamped_and_none_without_truth():
    assert closest_to_truth(torch.tensor([1.0, 0.1, 2.0]), RANGES).tolist() == pytest.approx([1.0, 0.1, 2.0])
    assert closest_to_truth(torch.tensor([1.0, 0.5, 2.0]), RANGES).tolist() == pytest.approx([1.0, 0.33, 2.0])
    assert closest_to_truth(torch.full((3,), math.nan), RANGES) is None


def test_readout_texts_give_scores_and_verdicts():
    assert readout_texts(0.93, 0.9612, 0.02) == ("0.930 > 0.5: valid", "0.961 explained: valid")
    assert readout_texts(0.2, 0.8, -0.0314) == ("0.200 ≤ 0.5: invalid", "0.800 explained: invalid (0.031 past a bound)")


def test_camera_view_looks_along_the_camera_from_behind_it():
    c2w = torch.eye(4)[:3]
    c2w[:, 3] = torch.tensor([1.0, 2.0, 3.0])
    view = camera_view(c2w, fy=50.0, cy=50.0, look_distance=2.0, behind=0.5, scale_ratio=10.0)
    assert view.position == pytest.approx((10.0, 20.0, 35.0))
    assert view.look_at == pytest.approx((10.0, 20.0, 10.0))  # along -z
    assert view.up_direction == pytest.approx((0.0, 1.0, 0.0))
    assert view.fov == pytest.approx(math.pi / 2)


# ---------------------------------------------------------------- on a trained run


@pytest.fixture(scope="module")
def pipeline(tiny_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_run / "config.yml", test_mode="test")
    return pipeline


@pytest.fixture(scope="module")
def cache(pipeline):
    """The supervision cache the controls use (same rays: seed 0)."""
    from osn_nerfstudio.validity_labels import supervision_cache_of

    return supervision_cache_of(pipeline.model, pipeline.datamanager, torch.Generator().manual_seed(0))


@torch.no_grad()
def expected_readouts(pipeline, cache, scales):
    from osn_nerfstudio.core.validity import valid_set, validity

    model = pipeline.model
    osn_score = float(model.scale_network.probability(scales[None])[0])
    exact = float(validity(cache, scales.cpu()[None], model.config.validity.min_accumulation)[0])
    margin = float(
        valid_set(cache, model.scale_range.cpu(), model.config.validity).valid.margins(scales.cpu()[None])[0]
    )
    return osn_score, exact, margin


def check_readouts(pipeline, cache):
    controls = pipeline.viewer_controls
    expected = readout_texts(*expected_readouts(pipeline, cache, pipeline.model.render_scales))
    assert (controls.osn_readout.value, controls.validity_readout.value) == expected


def test_the_viewer_finds_sliders_buttons_and_readouts_in_order(pipeline):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

    model = pipeline.model
    found = parse_object(pipeline, ViewerElement, "Custom Elements")
    labels = [element.name for _, element in found]
    assert labels == [f"{name} scale" for name in model.object_names[1:]] + [
        "Sample valid configuration",
        "Closest to ground truth",
        "OSN score",
        "Exact validity",
    ]
    for (_, slider), (low, high) in zip(found, model.scale_range[1:].tolist()):
        assert (slider.min, slider.max) == pytest.approx((low, high))
        assert low <= slider.value <= high
    assert [control for _, control in parse_object(pipeline, ViewerControl, "Custom Elements")] == [
        pipeline.viewer_controls
    ]


def test_sample_button_moves_the_render_configuration_and_the_readouts(pipeline, cache):
    controls, model = pipeline.viewer_controls, pipeline.model
    before = model.render_scales.clone()
    controls.sample_button.cb_hook(controls.sample_button)
    scales = model.render_scales.clone()
    assert not torch.allclose(scales, before)
    assert scales[0] == 1.0
    assert ((scales >= model.scale_range[:, 0]) & (scales <= model.scale_range[:, 1])).all()
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(scales[1:].tolist())
    check_readouts(pipeline, cache)
    # a trained network's samples are valid by its own score
    assert float(model.scale_network.probability(scales[None])[0]) > 0.5


def test_moving_a_slider_sets_its_object_scale_only(pipeline, cache):
    controls, model = pipeline.viewer_controls, pipeline.model
    before = model.render_scales.clone()
    slider = controls.scale_sliders[0]
    slider.value = slider.max
    slider.cb_hook(slider)
    assert model.render_scales[1] == pytest.approx(slider.max)
    assert torch.equal(model.render_scales[2:], before[2:])
    check_readouts(pipeline, cache)
    slider.value = slider.max * 10
    slider.cb_hook(slider)
    assert model.render_scales[1] == pytest.approx(slider.max), "clamped to the object's range"


def test_ground_truth_button_shows_the_configuration_closest_to_the_truth(pipeline, cache):
    controls, model = pipeline.viewer_controls, pipeline.model
    assert controls.truth_button is not None
    controls.sample_button.cb_hook(controls.sample_button)
    controls.truth_button.cb_hook(controls.truth_button)
    truth = closest_to_truth(model.true_scales, model.scale_range)
    assert torch.allclose(model.render_scales, truth)
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(truth[1:].tolist())
    check_readouts(pipeline, cache)


def test_every_output_of_a_camera_renders_in_the_viewer(pipeline):
    """The viewer lists every output of ``get_outputs_for_camera``; its colormaps take 3 channels (colour) or 1."""
    from nerfstudio.utils import colormaps
    from nerfstudio.viewer.control_panel import _get_colormap_options

    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    assert {"rgb", "depth", "accumulation", "segmentation"} <= set(outputs)
    for name in model.object_names:
        assert {f"rgb_{name}", f"depth_{name}", f"accumulation_{name}"} <= set(outputs)
    for name, image in outputs.items():
        assert image.shape[-1] in (1, 3) and image.is_floating_point(), (name, image.shape)
        colormap = _get_colormap_options(image.shape[-1], image.dtype)[0]
        rendered = colormaps.apply_colormap(image, colormaps.ColormapOptions(colormap=colormap))
        assert rendered.shape == (*image.shape[:2], 3) and torch.isfinite(rendered).all(), name


def test_setup_shows_the_configuration_and_places_new_views(pipeline):
    controls = pipeline.viewer_controls
    connected = []
    controls._setup(SimpleNamespace(viser_server=SimpleNamespace(on_client_connect=connected.append)))
    assert connected == [controls.look_from_first_frame]
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(
        pipeline.model.render_scales[1:].tolist()
    )


def test_sliders_follow_the_render_configuration_a_refit_chooses(pipeline):
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes

    controls, model = pipeline.viewer_controls, pipeline.model
    follow = pipeline.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, None))[-1]
    refit_step = model.config.bootstrap_steps - 1
    assert model.is_refit_step(refit_step) and not model.is_refit_step(refit_step + 1)
    controls._setup(SimpleNamespace(viser_server=SimpleNamespace(on_client_connect=lambda _: None)))
    shown = [slider.value for slider in controls.scale_sliders]
    chosen = model.scale_network.sample(1, generator=torch.Generator().manual_seed(5)).scales[0]
    model.render_scales.copy_(chosen)  # what a refit does
    follow.run_callback(refit_step + 1)
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(shown), "only after refits"
    follow.run_callback(refit_step)
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(chosen[1:].tolist())
    # without a viewer nothing is shown (and no supervision cache rendered)
    del controls.viewer
    model.render_scales.copy_(model.scale_network.sample(1, generator=torch.Generator().manual_seed(6)).scales[0])
    follow.run_callback(refit_step)
    assert [slider.value for slider in controls.scale_sliders] == pytest.approx(chosen[1:].tolist())
