"""Per-object radiance fields: shapes, ranges, object independence, gradients, implementation choice, fitting."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nerfstudio.utils.external import TCNN_EXISTS

from conftest import field_optimizer
from osn_nerfstudio.fields.object_fields import (
    MAX_LOG_DENSITY,
    DenseGridEncoding,
    ObjectExtent,
    ObjectFields,
    ObjectFieldsConfig,
    footprint_resolutions,
)

BACKBONES = ["grid", "hash", "kplanes"]
NUM_OBJECTS = 3
NUM_SAMPLES = 256
TCNN_RUNS = TCNN_EXISTS and torch.cuda.is_available()


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are small: a second thread only adds synchronisation, which stalls when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_fields(backbone: str, num_objects: int = NUM_OBJECTS) -> ObjectFields:
    # small hash tables keep construction fast; the architecture is otherwise the default one
    config = ObjectFieldsConfig(backbone=backbone, implementation="torch", hash_log2_table_size=12)
    return ObjectFields(num_objects, config)


def random_inputs(num_objects: int = NUM_OBJECTS, num_samples: int = NUM_SAMPLES):
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(num_objects, num_samples, 3, generator=generator)
    directions = torch.nn.functional.normalize(torch.randn(num_objects, num_samples, 3, generator=generator), dim=-1)
    return points, directions


def perturb_object(fields: ObjectFields, k: int) -> None:
    """Adds noise to every parameter that belongs to object k."""
    with torch.no_grad():
        if isinstance(fields.encoding, DenseGridEncoding):
            encoding_params = fields.encoding.object_levels(k)
        else:
            encoding_params = list(fields.encoding.encodings[k].parameters())
        head_params = list(fields.density_heads[k].parameters()) + list(fields.colour_heads[k].parameters())
        for param in encoding_params + head_params:
            param.add_(torch.randn_like(param) * 0.5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_and_ranges(backbone: str) -> None:
    fields = make_fields(backbone)
    points, directions = random_inputs()
    density, rgb = fields(points, directions)
    assert density.shape == (NUM_OBJECTS, NUM_SAMPLES)
    assert rgb.shape == (NUM_OBJECTS, NUM_SAMPLES, 3)
    assert torch.all(density >= 0) and torch.all(torch.isfinite(density))
    assert torch.all((rgb >= 0) & (rgb <= 1))
    assert torch.allclose(fields.density(points), density)
    # initial fog: thin enough not to hide what lies behind, dense enough to pass gradients
    assert 0.05 < density.mean().item() < 1.0
    regularisation = fields.regularisation()
    assert regularisation.shape == () and regularisation.item() >= 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_objects_are_independent(backbone: str) -> None:
    fields = make_fields(backbone)
    points, directions = random_inputs()
    density_before, rgb_before = fields(points, directions)
    perturb_object(fields, 2)
    density_after, rgb_after = fields(points, directions)
    assert torch.equal(density_after[:2], density_before[:2])
    assert torch.equal(rgb_after[:2], rgb_before[:2])
    assert not torch.allclose(density_after[2], density_before[2])
    assert not torch.allclose(rgb_after[2], rgb_before[2])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_points(backbone: str) -> None:
    fields = make_fields(backbone)
    points, directions = random_inputs()
    points.requires_grad_()
    density, rgb = fields(points, directions)
    (density.sum() + rgb.sum()).backward()
    assert points.grad is not None
    assert torch.all(torch.isfinite(points.grad))
    assert (points.grad.abs().sum(dim=-1) > 0).float().mean() > 0.99


@pytest.mark.parametrize("backbone", BACKBONES)
def test_single_object_path_matches_batched_path(backbone: str) -> None:
    fields = make_fields(backbone)
    points, directions = random_inputs()
    density, rgb = fields(points, directions)
    for k in range(NUM_OBJECTS):
        # any batch shape: here the object's samples as 16 rays of 16 samples
        object_density, object_rgb = fields.object_forward(k, points[k].view(16, 16, 3), directions[k].view(16, 16, 3))
        assert torch.allclose(object_density.flatten(), density[k], atol=1e-6)
        assert torch.allclose(object_rgb.view(-1, 3), rgb[k], atol=1e-6)
        assert torch.allclose(fields.object_density(k, points[k]), density[k], atol=1e-6)


def test_auto_implementation_matches_machine() -> None:
    fields = ObjectFields(2, ObjectFieldsConfig(implementation="auto"))
    assert fields.implementation == ("tcnn" if TCNN_RUNS else "torch")


@pytest.mark.skipif(TCNN_RUNS, reason="tinycudann runs here")
def test_tcnn_without_tinycudann_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="tinycudann") as error:
        ObjectFields(2, ObjectFieldsConfig(implementation="tcnn"))
    assert "pip install" in str(error.value) and "'torch'" in str(error.value)


def target_field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth density blob and a smooth colour pattern over the unit box."""
    distance = (points - 0.5).norm(dim=-1)
    density = 4.0 * torch.exp(-8.0 * distance**2)
    mixing = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 1.0]])
    rgb = 0.5 + 0.4 * torch.sin(2 * math.pi * points @ mixing)
    return density, rgb


def test_grid_field_fits_a_simple_target() -> None:
    torch.manual_seed(0)
    # coarser levels than the default keep the test fast; the code path is the default backbone's
    config = ObjectFieldsConfig(backbone="grid", implementation="torch", grid_resolutions=(8, 16, 32))
    fields = ObjectFields(1, config)
    optimizer = field_optimizer(fields)
    directions = torch.nn.functional.normalize(torch.randn(1, 1024, 3), dim=-1)

    def loss_at(points: torch.Tensor) -> torch.Tensor:
        density, rgb = fields(points, directions)
        target_density, target_rgb = target_field(points)
        return (density - target_density).square().mean() + (rgb - target_rgb).square().mean()

    test_points = torch.rand(1, 1024, 3)
    with torch.no_grad():
        initial_loss = loss_at(test_points).item()
    for _ in range(200):
        optimizer.zero_grad()
        loss_at(torch.rand(1, 1024, 3)).backward()
        optimizer.step()
    with torch.no_grad():
        final_loss = loss_at(test_points).item()
    assert final_loss < initial_loss / 10, (initial_loss, final_loss)


def test_a_field_past_the_density_cap_still_gets_gradients() -> None:
    """The log-density cap keeps densities finite without cutting the gradient, so a field pushed past it can
    come back (with a plain clamp it stays opaque everywhere)."""
    fields = ObjectFields(1, ObjectFieldsConfig(implementation="torch", density_bias=MAX_LOG_DENSITY + 50.0))
    points, _ = random_inputs(num_objects=1)
    density = fields.object_density(0, points[0])
    assert torch.allclose(density, torch.full_like(density, math.exp(MAX_LOG_DENSITY)), rtol=1e-5)
    density.sum().backward()
    head = fields.density_heads[0]
    assert any(float(p.grad.abs().max()) > 0 for p in head.parameters() if p.grad is not None)


def test_footprint_rule_gives_each_object_cells_as_fine_as_its_pixels():
    config = ObjectFieldsConfig(grid_sizing="footprint", grid_resolutions=(0, 0, 0), grid_pixels_per_cell=2.0,
                                grid_max_cells=1 << 30, grid_min_resolution=8)
    # a 20 cm ball seen from 2 m by a 300-pixel focal length spans 30 pixels: 15 cells, then 8 (the floor) twice
    assert footprint_resolutions(ObjectExtent((0.2, 0.2, 0.2), 2.0), 300.0, config) == [
        (8, 8, 8), (8, 8, 8), (15, 15, 15)
    ]
    # a 10 x 4 x 3 m room seen from 5 m: 300 x 120 x 90 cells, halving per level; its units do not matter
    room = footprint_resolutions(ObjectExtent((10.0, 4.0, 3.0), 5.0), 300.0, config)
    assert room == [(75, 30, 22), (150, 60, 45), (300, 120, 90)]
    assert footprint_resolutions(ObjectExtent((1.0, 0.4, 0.3), 0.5), 300.0, config) == room
    # capped: the finest level shrinks evenly to the cell budget
    capped = footprint_resolutions(
        ObjectExtent((10.0, 4.0, 3.0), 5.0), 300.0, replace(config, grid_max_cells=300 * 120 * 90 // 8)
    )
    assert capped[-1] == (150, 60, 45)


def test_footprint_sized_fields_build_each_objects_grids():
    config = ObjectFieldsConfig(
        backbone="grid", implementation="torch", grid_sizing="footprint", grid_max_cells=1 << 16
    )
    extents = [ObjectExtent((10.0, 4.0, 3.0), 5.0), ObjectExtent((0.2, 0.2, 0.2), 2.0)]
    fields = ObjectFields(2, config, extents, focal=300.0)
    for k, extent in enumerate(extents):
        shapes = [tuple(level.shape) for level in fields.encoding.object_levels(k)]
        assert shapes == [(config.grid_features, z, y, x) for x, y, z in footprint_resolutions(extent, 300.0, config)]
    points, directions = random_inputs(num_objects=2)
    density, rgb = fields(points, directions)
    assert density.shape == (2, NUM_SAMPLES) and rgb.shape == (2, NUM_SAMPLES, 3)
    with pytest.raises(ValueError, match="extent"):
        ObjectFields(2, config)


def test_footprint_sizing_sets_each_objects_finest_hash_resolution():
    config = ObjectFieldsConfig(
        backbone="hash", implementation="torch", grid_sizing="footprint", hash_log2_table_size=10
    )
    extents = [ObjectExtent((10.0, 4.0, 3.0), 5.0), ObjectExtent((0.2, 0.2, 0.2), 2.0)]
    fields = ObjectFields(2, config, extents, focal=300.0)
    # nerfstudio keeps each level's resolution as ``scalings`` (min_res times the growth factor per level)
    finest = [float(fields.encoding.encodings[k][0].scalings[-1]) for k in range(2)]
    assert finest == pytest.approx([300, 2 * config.hash_min_resolution], abs=1.0)


def appearance_fields(appearance_dim: int = 4, num_frames: int = 5) -> ObjectFields:
    config = ObjectFieldsConfig(implementation="torch", grid_resolutions=(8, 16), appearance_dim=appearance_dim)
    return ObjectFields(2, config, num_frames=num_frames)


def test_appearance_codes_blend_the_two_nearest_frames_and_hold_outside_the_video() -> None:
    fields = appearance_fields()
    with torch.no_grad():
        fields.appearance.copy_(torch.randn_like(fields.appearance))
    codes = fields.appearance[1]
    frames = torch.tensor([0.0, 2.25, 3.5, 4.0, -1.0, 7.0])
    expected = torch.stack([codes[0], 0.75 * codes[2] + 0.25 * codes[3], 0.5 * codes[3] + 0.5 * codes[4],
                            codes[4], codes[0], codes[4]])
    assert torch.allclose(fields.appearance_codes(1, frames), expected, atol=1e-6)


def test_appearance_changes_colour_only_and_broadcasts_per_ray() -> None:
    fields = appearance_fields()
    with torch.no_grad():
        fields.appearance.copy_(torch.randn_like(fields.appearance))
    points, directions = random_inputs(2, 64)
    rays_points, rays_directions = points[1].view(8, 8, 3), directions[1].view(8, 8, 3)
    per_ray = torch.arange(8.0)[:, None] * 0.5
    density, rgb = fields.object_forward(1, rays_points, rays_directions, per_ray)
    per_sample_density, per_sample_rgb = fields.object_forward(1, rays_points, rays_directions, per_ray.expand(8, 8))
    assert torch.equal(density, per_sample_density) and torch.allclose(rgb, per_sample_rgb, atol=1e-6)
    other_density, other_rgb = fields.object_forward(1, rays_points, rays_directions, per_ray + 1.0)
    assert torch.equal(other_density, density)
    assert (other_rgb - rgb).abs().amax() > 1e-3
    frames = per_ray.expand(8, 8).reshape(1, 64)  # each sample's frame, in the samples' order
    _, batched_rgb = fields(points, directions, frames.expand(2, 64))
    assert torch.allclose(batched_rgb[1], fields.object_forward(1, points[1], directions[1], frames[0])[1], atol=1e-6)


@pytest.mark.parametrize("appearance_dim", [0, 4])
def test_only_appearance_codes_fit_a_colour_that_changes_between_frames(appearance_dim: int) -> None:
    """An object red in even frames and green in odd ones, seen from random directions: without codes nothing tells
    the frames apart (mean absolute error 0.5 on the two changing channels, whatever it predicts), with codes the
    field matches every frame."""
    torch.manual_seed(0)
    fields = appearance_fields(appearance_dim, num_frames=4)
    optimizer = field_optimizer(fields)
    frames = torch.arange(4.0).repeat_interleave(64)
    target = torch.stack([1.0 - frames % 2, frames % 2, torch.zeros_like(frames)], dim=-1)

    def directions() -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)

    for _ in range(300):
        optimizer.zero_grad()
        _, rgb = fields.object_forward(0, torch.rand(256, 3), directions(), frames)
        (rgb - target).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        _, rgb = fields.object_forward(0, torch.rand(256, 3), directions(), frames)
    error = (rgb - target).abs()[:, :2].mean().item()
    if appearance_dim == 0:
        assert error > 0.45
    else:
        assert error < 0.05
