"""Scaled composite rendering and per-object rendering (osn_nerfstudio.core.compositing)."""

import math

import pytest
import torch

from osn_nerfstudio.core.compositing import ObjectSamples, composite, render_alone, sample_alphas, weights_along_rays

DTYPE = torch.float64
RED, GREEN, BLUE = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


def samples_of(starts, ends, density, rgb) -> ObjectSamples:
    return ObjectSamples(*(torch.as_tensor(x, dtype=DTYPE) for x in (starts, ends, density, rgb)))


def uniform_samples(num_rays, near, far, num_samples, density, rgb) -> ObjectSamples:
    """One object per call: ``num_samples`` equal intervals over [near, far] on every ray, [R, 1, N]."""
    edges = torch.linspace(near, far, num_samples + 1, dtype=DTYPE)
    shape = (num_rays, 1, num_samples)
    return ObjectSamples(
        starts=edges[:-1].expand(shape),
        ends=edges[1:].expand(shape),
        density=torch.as_tensor(density, dtype=DTYPE).reshape(-1, 1, 1).expand(shape),
        rgb=torch.tensor(rgb, dtype=DTYPE).expand(*shape, 3),
    )


def stack_objects(*objects: ObjectSamples) -> ObjectSamples:
    fields = ("starts", "ends", "density", "rgb")
    return ObjectSamples(*(torch.cat([getattr(o, f) for o in objects], dim=1) for f in fields))


# --------------------------------------------------------------------------------------------- hand cases


def test_two_samples_of_one_object_by_hand():
    # alphas 1 - exp(-ln2) = 0.5 and 1 - exp(-ln4) = 0.75
    s = samples_of([[[1.0, 2.0]]], [[[2.0, 3.0]]], [[[math.log(2), math.log(4)]]], [[[RED, GREEN]]])
    assert torch.allclose(sample_alphas(s), torch.tensor([[[0.5, 0.75]]], dtype=DTYPE))
    out = composite(s, torch.ones(1, dtype=DTYPE))
    assert torch.allclose(out.weights, torch.tensor([[[0.5, 0.375]]], dtype=DTYPE))
    assert torch.allclose(out.accumulation, torch.tensor([[0.875]], dtype=DTYPE))
    assert torch.allclose(out.rgb, torch.tensor([[0.5, 0.375, 0.0]], dtype=DTYPE))
    assert torch.allclose(out.depth, torch.tensor([[(0.5 * 1.5 + 0.375 * 2.5) / 0.875]], dtype=DTYPE))
    assert torch.allclose(out.object_weights, torch.tensor([[0.875]], dtype=DTYPE))
    white = composite(s, torch.ones(1, dtype=DTYPE), background_color=torch.ones(3))
    assert torch.allclose(white.rgb, torch.tensor([[0.625, 0.5, 0.125]], dtype=DTYPE))


def test_two_objects_one_sample_each_by_hand():
    # object 0 at [4, 6] (mid 5), alpha 0.5; object 1 at own [1, 2] (mid 1.5), alpha 0.75 in own units
    s = samples_of([[[4.0], [1.0]]], [[[6.0], [2.0]]], [[[math.log(2) / 2], [math.log(4)]]], [[[RED], [GREEN]]])
    # s_1 = 3: object 1 at scene distance 4.5, in front of object 0
    front = composite(s, torch.tensor([1.0, 3.0], dtype=DTYPE))
    assert torch.allclose(front.weights, torch.tensor([[[0.125], [0.75]]], dtype=DTYPE))
    assert torch.allclose(front.rgb, torch.tensor([[0.125, 0.75, 0.0]], dtype=DTYPE))
    assert torch.allclose(front.depth, torch.tensor([[(0.75 * 4.5 + 0.125 * 5) / 0.875]], dtype=DTYPE))
    # s_1 = 4: object 1 at scene distance 6, behind object 0; alphas (in own units) do not change
    behind = composite(s, torch.tensor([1.0, 4.0], dtype=DTYPE))
    assert torch.allclose(behind.weights, torch.tensor([[[0.5], [0.375]]], dtype=DTYPE))
    assert torch.allclose(behind.object_weights, torch.tensor([[0.5, 0.375]], dtype=DTYPE))
    assert torch.allclose(behind.depth, torch.tensor([[(0.5 * 5 + 0.375 * 6) / 0.875]], dtype=DTYPE))


def test_empty_ray_has_zero_colour_and_finite_depth():
    s = samples_of([[[0.0, 0.0]]], [[[0.0, 0.0]]], [[[0.0, 0.0]]], [[[RED, GREEN]]])
    out = composite(s, torch.ones(1, dtype=DTYPE), background_color=torch.tensor(BLUE))
    assert torch.equal(out.accumulation, torch.zeros(1, 1, dtype=DTYPE))
    assert torch.equal(out.rgb, torch.tensor([BLUE], dtype=DTYPE))
    assert torch.equal(out.depth, torch.zeros(1, 1, dtype=DTYPE))
    alone = render_alone(s)
    assert torch.equal(alone.depth, torch.zeros(1, 1, dtype=DTYPE))


# --------------------------------------------------------------------------------------------- scale


def test_opacity_does_not_depend_on_scale():
    g = torch.Generator().manual_seed(0)
    density = torch.rand(6, generator=g, dtype=DTYPE) * 3
    s = uniform_samples(6, 1.0, 2.0, 16, density, RED)
    small, large, unit = (composite(s, torch.tensor([v], dtype=DTYPE)) for v in (0.3, 3.0, 1.0))
    for out in (small, large):
        assert torch.allclose(out.rgb, unit.rgb, rtol=1e-12)
        assert torch.allclose(out.accumulation, unit.accumulation, rtol=1e-12)
        assert torch.allclose(out.object_weights, unit.object_weights, rtol=1e-12)
        assert torch.allclose(out.weights, unit.weights, rtol=1e-12)
    assert torch.allclose(small.depth, 0.3 * unit.depth, rtol=1e-12)
    assert torch.allclose(large.depth, 3.0 * unit.depth, rtol=1e-12)
    assert (unit.accumulation > 0.5).any()  # the case is not trivially transparent


def disjoint_scene(num_rays: int = 8):
    """Object 1 on the first half of the rays, object 2 on the rest, an opaque background behind everything."""
    background = uniform_samples(num_rays, 10.0, 12.0, 8, [50.0] * num_rays, BLUE)
    on_first = torch.arange(num_rays) < num_rays // 2
    g = torch.Generator().manual_seed(1)
    density_1 = torch.where(on_first, 0.3 + torch.rand(num_rays, generator=g, dtype=DTYPE) * 2, 0.0)
    density_2 = torch.where(~on_first, 0.3 + torch.rand(num_rays, generator=g, dtype=DTYPE) * 2, 0.0)
    object_1 = uniform_samples(num_rays, 1.0, 2.0, 8, density_1, RED)  # own units
    object_2 = uniform_samples(num_rays, 3.0, 5.0, 8, density_2, GREEN)
    return stack_objects(background, object_1, object_2), on_first


@pytest.mark.parametrize("s1, s2", [(0.2, 0.5), (4.0, 1.9), (4.9, 0.1), (0.05, 1.99)])
def test_objects_on_disjoint_rays_render_the_same_at_any_scale(s1, s2):
    """Every configuration keeping both objects in front of the background reproduces the image."""
    s, _ = disjoint_scene()
    reference = composite(s, torch.tensor([1.0, 1.0, 1.0], dtype=DTYPE))
    out = composite(s, torch.tensor([1.0, s1, s2], dtype=DTYPE))
    assert torch.allclose(out.rgb, reference.rgb, atol=1e-12)
    assert torch.allclose(out.object_weights, reference.object_weights, atol=1e-12)
    # partly transparent objects: colour mixes with the background, so this is a real compositing check
    assert (reference.object_weights[:, 0] > 0.01).all() and (reference.object_weights[:, 1:].sum(-1) > 0.01).all()


@pytest.mark.parametrize("s1, s2", [(0.2, 0.5), (4.0, 1.9)])
def test_depth_of_opaque_object_scales_with_it(s1, s2):
    s, on_first = disjoint_scene()
    s.density[:, 1:] = torch.where(s.density[:, 1:] > 0, 1e3, 0.0)  # opaque where present
    reference = composite(s, torch.tensor([1.0, 1.0, 1.0], dtype=DTYPE))
    out = composite(s, torch.tensor([1.0, s1, s2], dtype=DTYPE))
    expected = torch.where(on_first[:, None], s1 * reference.depth, s2 * reference.depth)
    assert torch.allclose(out.depth, expected, rtol=1e-10)
    assert torch.allclose(out.rgb, reference.rgb, atol=1e-12)


def test_scaled_order_decides_which_overlapping_object_wins():
    background = uniform_samples(4, 20.0, 22.0, 8, [30.0] * 4, BLUE)
    red = uniform_samples(4, 2.0, 3.0, 8, [1e3] * 4, RED)
    green = uniform_samples(4, 2.0, 3.0, 8, [1e3] * 4, GREEN)
    s = stack_objects(background, red, green)
    red_first = composite(s, torch.tensor([1.0, 0.5, 2.0], dtype=DTYPE))
    green_first = composite(s, torch.tensor([1.0, 2.0, 0.5], dtype=DTYPE))
    assert torch.allclose(red_first.rgb, torch.tensor(RED, dtype=DTYPE).expand(4, 3), atol=1e-9)
    assert torch.allclose(green_first.rgb, torch.tensor(GREEN, dtype=DTYPE).expand(4, 3), atol=1e-9)
    assert (red_first.object_weights.argmax(-1) == 1).all() and (green_first.object_weights.argmax(-1) == 2).all()
    for out in (red_first, green_first):
        assert torch.allclose(out.object_weights.sum(-1, keepdim=True), out.accumulation, atol=1e-12)
    # opaque front object: depth is its scaled expected distance (mid-point of its first sample, 0.5 * 2.0625)
    assert torch.allclose(red_first.depth, torch.full((4, 1), 0.5 * 2.0625, dtype=DTYPE), atol=1e-9)


def test_per_ray_scales():
    s, _ = disjoint_scene()
    scales = torch.ones(8, 3, dtype=DTYPE)
    scales[:, 1] = torch.linspace(0.2, 4.0, 8, dtype=DTYPE)
    batched = composite(s, scales)
    for r in range(8):
        ray = slice(r, r + 1)
        single = composite(ObjectSamples(s.starts[ray], s.ends[ray], s.density[ray], s.rgb[ray]), scales[r])
        assert torch.allclose(batched.depth[r], single.depth[0], rtol=1e-12)


# --------------------------------------------------------------------------------------------- alone


def random_samples(num_rays: int, num_objects: int, num_samples: int, seed: int) -> ObjectSamples:
    g = torch.Generator().manual_seed(seed)
    edges = torch.sort(torch.rand(num_rays, num_objects, num_samples + 1, generator=g, dtype=DTYPE) * 5 + 0.5).values
    density = torch.rand(num_rays, num_objects, num_samples, generator=g, dtype=DTYPE) * 3
    density[torch.rand(density.shape, generator=g) < 0.3] = 0.0
    density[0, 1] = 0.0  # one object missed entirely by one ray
    rgb = torch.rand(num_rays, num_objects, num_samples, 3, generator=g, dtype=DTYPE)
    return ObjectSamples(edges[..., :-1], edges[..., 1:], density, rgb)


def test_render_alone_matches_composite_with_only_that_object():
    s = random_samples(6, 3, 10, seed=2)
    alone = render_alone(s)
    assert alone.depth[0, 1] == 0 and alone.accumulation[0, 1] == 0
    for k in range(3):
        only_k = ObjectSamples(s.starts, s.ends, torch.zeros_like(s.density), s.rgb)
        only_k.density[:, k] = s.density[:, k]
        out = composite(only_k, torch.ones(3, dtype=DTYPE))
        assert torch.allclose(alone.weights[:, k], out.weights[:, k], atol=1e-12)
        assert torch.allclose(alone.rgb[:, k], out.rgb, atol=1e-12)
        assert torch.allclose(alone.accumulation[:, k], out.accumulation[:, 0], atol=1e-12)
        hit = alone.accumulation[:, k] > 0
        # composite's depth divides by accumulation + 1e-10 (nerfstudio), render_alone by accumulation
        assert torch.allclose(alone.depth[hit, k], out.depth[hit, 0], rtol=1e-6)


# --------------------------------------------------------------------------------------------- brute force


def brute_force_composite(s: ObjectSamples, scales: torch.Tensor):
    """Merge every sample of a ray into one Python list sorted by scaled distance and composite it."""
    num_rays, num_objects, num_samples = s.density.shape
    rgb, depth = torch.zeros(num_rays, 3, dtype=DTYPE), torch.zeros(num_rays, dtype=DTYPE)
    weights = torch.zeros_like(s.density)
    for r in range(num_rays):
        merged = []
        for k in range(num_objects):
            for n in range(num_samples):
                distance = scales[k] * (s.starts[r, k, n] + s.ends[r, k, n]) / 2
                alpha = 1 - math.exp(-float(s.density[r, k, n]) * float(s.ends[r, k, n] - s.starts[r, k, n]))
                merged.append((float(distance), alpha, k, n))
        merged.sort(key=lambda item: item[0])
        transmittance = 1.0
        for distance, alpha, k, n in merged:
            weights[r, k, n] = alpha * transmittance
            rgb[r] += alpha * transmittance * s.rgb[r, k, n]
            depth[r] += alpha * transmittance * distance
            transmittance *= 1 - alpha
        distances = [item[0] for item in merged]
        depth[r] = min(max(depth[r] / (weights[r].sum() + 1e-10), min(distances)), max(distances))
    return rgb, depth[:, None], weights


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_composite_matches_brute_force(seed):
    s = random_samples(5, 3, 6, seed=seed)
    scales = torch.tensor([1.0, 0.6, 1.7], dtype=DTYPE)
    rgb, depth, weights = brute_force_composite(s, scales)
    out = composite(s, scales)
    assert torch.allclose(out.weights, weights, atol=1e-12)
    assert torch.allclose(out.rgb, rgb, atol=1e-12)
    assert torch.allclose(out.depth, depth, atol=1e-10)
    assert torch.allclose(out.accumulation[:, 0], weights.sum((1, 2)), atol=1e-12)
    assert torch.allclose(out.object_weights, weights.sum(-1), atol=1e-12)


def test_gradients_are_finite_and_reach_density_colour_and_scales():
    s = random_samples(4, 3, 5, seed=6)
    s.density.requires_grad_(True)
    s.rgb.requires_grad_(True)
    scales = torch.tensor([1.0, 0.8, 1.3], dtype=DTYPE, requires_grad=True)
    out = composite(s, scales, background_color=torch.ones(3))
    (out.rgb.sum() + out.depth.sum()).backward()
    for grad in (s.density.grad, s.rgb.grad, scales.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_weights_behind_an_opaque_sample_vanish_in_float32():
    # a trained field: an opaque sample (σδ = 15) followed by far denser ones, as on a real 4800-step run
    thickness = torch.tensor([[1e-5, 15.0, 8.4e8, 6.8e9, 1e10]], requires_grad=True)
    weights = weights_along_rays(thickness)
    assert float(weights.sum()) <= 1.0 + 1e-6
    assert float(weights[0, 2:].sum()) < 1e-6
    # the accumulation 1 - exp(-Σσδ) is flat here: the opaque sample must get (almost) no gradient
    (gradient,) = torch.autograd.grad(weights.sum(), thickness)
    assert float(gradient.abs().max()) < 1e-5


def test_distortion_matches_its_pairwise_definition_and_favours_one_surface():
    from osn_nerfstudio.core.compositing import distortion

    g = torch.Generator().manual_seed(0)
    edges = torch.sort(torch.rand(5, 17, generator=g, dtype=torch.float64), dim=-1).values
    starts, ends = edges[:, :-1], edges[:, 1:]
    weights = torch.rand(5, 16, generator=g, dtype=torch.float64) / 16
    mid = (starts + ends) / 2
    pairwise = (weights[:, :, None] * weights[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((1, 2))
    expected = pairwise + (weights.pow(2) * (ends - starts)).sum(-1) / 3
    torch.testing.assert_close(distortion(weights, starts, ends), expected)
    # all weight on one sample costs less than the same weight spread as fog
    surface = torch.zeros(1, 16, dtype=torch.float64)
    surface[0, 8] = 1.0
    fog = torch.full((1, 16), 1 / 16, dtype=torch.float64)
    assert distortion(surface, starts[:1], ends[:1]) < distortion(fog, starts[:1], ends[:1]) / 3
