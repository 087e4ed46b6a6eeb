"""The OSN model's rendering invariances and validity, with analytic fields standing in for learned ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import field_optimizer
from osn_nerfstudio.core.validity import ValidityConfig, validity
from osn_nerfstudio.data.demo_scene import DemoSceneConfig, make_demo_scene
from osn_nerfstudio.data.osn_datamanager import within
from osn_nerfstudio.data.osn_dataparser import METADATA_KEY, OSNDataParserConfig
from osn_nerfstudio.fields.object_fields import ObjectFields, ObjectFieldsConfig, ObjectRadianceFields
from osn_nerfstudio.osn_model import OSNModelConfig, alone_colour_error
from osn_nerfstudio.validity_labels import hidden_object_rays, supervision_cache

SCENE = DemoSceneConfig(seed=5, width=40, height=30, num_frames=8, num_objects=3, test_view_every=4)


class BallFields(nn.Module, ObjectRadianceFields):
    """Object k > 0 is an opaque ball in the middle of its box; the background is an opaque shell at its box's walls."""

    def __init__(self, num_objects: int):
        super().__init__()
        self.colours = torch.rand(num_objects, 3, generator=torch.Generator().manual_seed(0))
        self.dummy = nn.Parameter(torch.zeros(1))
        self.radius = 0.3

    def object_density(self, k: int, points: torch.Tensor) -> torch.Tensor:
        centred = points - 0.5
        inside = centred.abs().amax(-1) > 0.47 if k == 0 else centred.norm(dim=-1) < self.radius
        return inside.float() * 1e4

    def object_forward(self, k: int, points: torch.Tensor, directions: torch.Tensor, frames=None):
        density = self.object_density(k, points)
        return density, self.colours[k].expand(*points.shape[:-1], 3)

    def regularisation(self) -> torch.Tensor:
        return torch.zeros(())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("model") / "scene"
    make_demo_scene(root, SCENE)
    outputs = OSNDataParserConfig(data=root).setup().get_dataparser_outputs("train")
    config = OSNModelConfig(num_coarse_samples=64, num_fine_samples=64, eval_num_rays_per_chunk=1 << 14)
    model = config.setup(scene_box=outputs.scene_box, num_train_data=len(outputs.cameras), metadata=outputs.metadata)
    model.fields = BallFields(model.num_objects)
    model.eval()
    return model, outputs


def frame_rays(outputs, frame: int):
    return outputs.cameras.generate_rays(camera_indices=frame).flatten()


def render(model, rays, scales):
    model.render_scales.copy_(scales)
    with torch.no_grad():
        return model.get_outputs(rays)


def ball_hits(model, outputs, rays, opacity: float = 0.0):
    """[R, K] whether each ray meets each object's ball (independent of scale: scaling is about the camera)."""
    alone = render(model, rays, model.true_scales)["alone_accumulation"]
    return alone > opacity


def test_training_view_is_the_same_at_any_configuration_without_occlusion(setup):
    model, outputs = setup
    truth = model.true_scales.clone()
    other = truth * torch.tensor([1.0, 0.8, 1.15, 0.9])[: model.num_objects]
    for frame in (0, 5):
        rays = frame_rays(outputs, frame)
        hits = ball_hits(model, outputs, rays)
        opaque = ball_hits(model, outputs, rays, opacity=0.999)  # rays through a ball, not grazing its rim
        single = hits[:, 1:].sum(-1) <= 1  # rays where no two foreground objects overlap
        assert single.sum() > 100 and hits[:, 1:].any()
        a, b = render(model, rays, truth), render(model, rays, other)
        assert torch.allclose(a["rgb"][single], b["rgb"][single], atol=1e-4)
        for k in range(1, model.num_objects):
            on_k = single & opaque[:, k]
            ratio = b["depth"][on_k, 0] / a["depth"][on_k, 0]
            assert torch.allclose(ratio, (other[k] / truth[k]).expand_as(ratio), rtol=2e-3)
        background_only = ~hits[:, 1:].any(-1)
        assert torch.allclose(a["depth"][background_only], b["depth"][background_only], rtol=1e-4)


def test_object_opacity_and_depth_do_not_depend_on_its_scale(setup):
    model, outputs = setup
    rays = frame_rays(outputs, 3)
    small = model.scale_range[:, 0] * 1.01
    large = model.scale_range[:, 1] * 0.99
    small[0] = large[0] = 1.0  # the background's scale is fixed
    a, b = render(model, rays, small), render(model, rays, large)
    assert torch.allclose(a["alone_accumulation"], b["alone_accumulation"], atol=1e-5)
    opaque = a["alone_accumulation"] > 0.999
    assert torch.allclose(a["alone_depth"][opaque], b["alone_depth"][opaque], rtol=1e-3)
    for k, name in enumerate(model.object_names[1:], start=1):
        seen = a["alone_accumulation"][:, k] > 0.999
        ratio = b[f"depth_{name}"][seen, 0] / a[f"depth_{name}"][seen, 0]
        assert torch.allclose(ratio, (large[k] / small[k]).expand_as(ratio), rtol=2e-3)


def test_validity_from_the_cache_matches_re_rendering_each_configuration(setup):
    model, outputs = setup
    overlaps = []
    for frame in range(len(outputs.cameras)):
        rays = frame_rays(outputs, frame)
        hits = ball_hits(model, outputs, rays)
        overlaps.append(int((hits[:, 1:].sum(-1) >= 2).sum()))
    frame = max(range(len(overlaps)), key=overlaps.__getitem__)
    assert overlaps[frame] > 0, "the demo scene should show overlapping objects"
    rays = frame_rays(outputs, frame)
    hits = ball_hits(model, outputs, rays)
    rays = rays[hits[:, 1:].any(-1)]  # rays on foreground objects, where the depth order matters
    cache_labels = torch.zeros(len(rays), dtype=torch.long)
    cache = supervision_cache(model, rays, cache_labels, torch.ones(len(rays)))
    configurations = model.scale_network.ranges.denormalise(
        torch.rand(12, model.num_objects - 1, generator=torch.Generator().manual_seed(1))
    )
    configurations = torch.cat([configurations, model.true_scales[None]])
    # label every ray by what the true configuration shows, then score every configuration both ways
    truth_winner = render(model, rays, model.true_scales)["object_weights"].argmax(-1)
    cache.label = truth_winner
    from_cache = validity(cache, configurations, model.config.validity.min_accumulation)
    for c, scales in enumerate(configurations):
        winner = render(model, rays, scales)["object_weights"].argmax(-1)
        brute_force = (winner == truth_winner).float().mean()
        assert float(from_cache[c]) == pytest.approx(float(brute_force), abs=0.02)
    assert float(from_cache[-1]) == pytest.approx(1.0, abs=0.01)
    assert float(from_cache.min()) < 0.99, "some random configuration should reverse an occlusion"


def test_renders_in_own_units_ignore_the_scene_near_bound(setup):
    """The validity cache and the bootstrap render objects alone in their own units: the scene's near bound
    (background units) must not clip them, or objects with small own units vanish from both."""
    model, outputs = setup
    rays = frame_rays(outputs, 0)
    labels = torch.zeros(len(rays), dtype=torch.long)
    training_rays = rays[:]
    training_rays.metadata = {**rays.metadata, "object_id": torch.ones(len(rays), 1, dtype=torch.long)}
    near = model.depth_bounds[0].clone()
    model.step = 0  # bootstrap
    try:
        results = []
        for bound in (near, 100.0 * model.depth_bounds[1]):
            model.depth_bounds[0] = bound
            with torch.no_grad():
                model.train()  # a training step of the bootstrap (stratified samples: the same jitter both times)
                torch.manual_seed(0)
                bootstrap = model(training_rays)["alone_accumulation"]
                model.eval()
            results.append((supervision_cache(model, rays, labels, torch.ones(len(rays))), bootstrap))
    finally:
        model.depth_bounds[0] = near
        model.eval()
    (cache, bootstrap), (far_cache, far_bootstrap) = results
    assert float(cache.acc[:, 1:].max()) > 0.99, "the frame should show a foreground object"
    assert torch.equal(cache.acc, far_cache.acc) and torch.equal(cache.depth, far_cache.depth)
    assert torch.equal(bootstrap, far_bootstrap)


def test_camera_without_frame_index_uses_its_time(setup):
    model, outputs = setup
    rays = frame_rays(outputs, 4)
    with_index = render(model, rays, model.true_scales)
    rays.metadata = {k: v for k, v in rays.metadata.items() if k != "frame_index"}
    from_time = render(model, rays, model.true_scales)
    assert torch.allclose(with_index["rgb"], from_time["rgb"], atol=1e-5)
    assert METADATA_KEY in outputs.metadata


def test_pixels_of_unknown_or_unregistered_objects_do_not_reach_the_colour_losses(setup):
    model, outputs = setup
    rays = frame_rays(outputs, 0)
    labels = render(model, rays, model.true_scales)["object_weights"].argmax(-1)
    labels[::11] = -1  # unknown pixels
    registered = model.registered.clone()
    model.registered[2, 0] = False  # object 2's structure from motion missed frame 0 (and its neighbour)
    model.registered[2, 1] = False
    try:
        result = render(model, rays, model.true_scales)
        assert (labels == 2).sum() >= 5 and (labels == 1).sum() >= 5
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.rand(len(rays), 3, generator=g), "object_id": labels[:, None]}
        losses = model.get_loss_dict(result, batch)
        repainted = batch["image"].clone()
        repainted[(labels == 2) | (labels == -1)] = torch.rand(3, generator=g)
        again = model.get_loss_dict(result, {**batch, "image": repainted})
        for key in ("rgb", "segmentation", "alone_rgb"):
            assert again[key] == pytest.approx(float(losses[key]), rel=1e-6), key
        repainted[labels == 1] = 0.5
        assert model.get_loss_dict(result, {**batch, "image": repainted})["rgb"] != pytest.approx(float(losses["rgb"]))
    finally:
        model.registered.copy_(registered)


def test_the_background_can_have_its_own_sample_budget(setup):
    model, outputs = setup
    rays = frame_rays(outputs, 3)
    reference = render(model, rays, model.true_scales)
    default = model.sampler.background_budget
    model.sampler.background_budget = (24, 8)
    try:
        samples, _ = model.sample_objects(rays, model.true_scales.expand(len(rays), -1))
        budget = render(model, rays, model.true_scales)
    finally:
        model.sampler.background_budget = default
    # foreground objects keep 64 + 64 (+1) samples; the background's 24 + 8 + 1 are padded with empty ones
    assert samples.density.shape[-1] == 129
    assert (samples.density[:, 0, 33:] == 0).all() and (samples.ends[:, 0, 33:] == samples.starts[:, 0, 33:]).all()
    # the background's shell is found either way, and nothing else changes
    assert (budget["accumulation"] > 0.99).all()
    torch.testing.assert_close(budget["rgb"], reference["rgb"], atol=2e-3, rtol=0)
    torch.testing.assert_close(budget["object_weights"][:, 1:], reference["object_weights"][:, 1:], atol=2e-3, rtol=0)


def test_each_ray_reads_the_appearance_codes_of_its_own_frame(setup):
    _, outputs = setup
    fields = ObjectFieldsConfig(implementation="torch", grid_resolutions=(8, 16), appearance_dim=4)
    config = OSNModelConfig(num_coarse_samples=8, num_fine_samples=8, fields=fields)
    model = config.setup(scene_box=outputs.scene_box, num_train_data=len(outputs.cameras), metadata=outputs.metadata)
    model.eval()
    assert model.fields.appearance.shape == (model.num_objects, len(outputs.cameras), 4)
    rays = {frame: frame_rays(outputs, frame) for frame in (2, 6)}
    torch.manual_seed(0)
    before = {frame: render(model, bundle, model.true_scales) for frame, bundle in rays.items()}
    with torch.no_grad():
        model.fields.appearance[:, 2].add_(torch.randn(model.num_objects, 4))
    after = {frame: render(model, bundle, model.true_scales) for frame, bundle in rays.items()}
    # frame 2's colours follow its codes, frame 6's do not; no code changes where anything is
    assert (after[2]["rgb"] - before[2]["rgb"]).abs().amax() > 1e-3
    torch.testing.assert_close(after[6]["rgb"], before[6]["rgb"])
    for frame in rays:
        torch.testing.assert_close(after[frame]["accumulation"], before[frame]["accumulation"])
        torch.testing.assert_close(after[frame]["depth"], before[frame]["depth"])


class ShownLabels:
    """The two datamanager methods ``hidden_object_rays`` reads, with labels of what the true configuration shows."""

    def __init__(self, model, outputs):
        self.cameras = outputs.cameras
        self.height, self.width = int(outputs.cameras.height[0]), int(outputs.cameras.width[0])
        shown = [
            render(model, frame_rays(outputs, f), model.true_scales)["object_weights"].argmax(-1)
            for f in range(len(outputs.cameras))
        ]
        self.labels = torch.stack(shown).reshape(-1, self.height, self.width)

    def supervising_labels(self, gap: int) -> torch.Tensor:
        return self.labels

    def near_object(self, frame: int, k: int, distance: int) -> torch.Tensor:
        return within((self.labels[frame] == k)[None], distance)[0]

    def pixel_rays(self, frame, y, x):
        self.last_pixels = (frame, y, x)
        coords = torch.stack([y, x], dim=-1).float() + 0.5
        return self.cameras.generate_rays(camera_indices=frame[:, None], coords=coords)


def hidden_rays_with(model, datamanager, gap: int, limit: int = 40):
    model.config.validity.hidden_pixels_per_pair, model.config.validity.hidden_gap = limit, gap
    try:
        return hidden_object_rays(model, datamanager, torch.Generator().manual_seed(0))
    finally:
        model.config.validity.hidden_pixels_per_pair = ValidityConfig.hidden_pixels_per_pair
        model.config.validity.hidden_gap = ValidityConfig.hidden_gap


def hidden_behind(model, datamanager, rays, labels, gap: int) -> torch.Tensor:
    """[R, K] brute force: foreground objects other than the label that are opaque alone on each ray, and whose own
    pixels in the ray's frame all lie more than ``gap`` pixels away."""
    alone = render(model, rays, model.true_scales)["alone_accumulation"]
    hidden = alone > model.config.validity.min_accumulation
    hidden[torch.arange(len(labels)), labels] = False
    hidden[:, 0] = False
    if gap > 0:
        frame, y, x = datamanager.last_pixels
        for k in range(1, model.num_objects):
            hidden[:, k] &= ~within(datamanager.labels == k, gap)[frame, y, x]
    return hidden


def test_hidden_object_rays_are_pixels_showing_one_object_with_another_opaque_behind(setup):
    model, outputs = setup
    datamanager = ShownLabels(model, outputs)
    limit = 40
    rays, labels = hidden_rays_with(model, datamanager, gap=0, limit=limit)
    assert len(rays) == len(labels) > 0
    hidden = hidden_behind(model, datamanager, rays, labels, gap=0)
    assert hidden.any(-1).all()
    # the labels are what the video shows there, and no (shown, hidden) pair has more than its limit
    shown_again = render(model, rays, model.true_scales)["object_weights"].argmax(-1)
    assert torch.equal(shown_again, labels)
    for shown in labels.unique():
        assert int((labels == shown).sum()) <= limit * (model.num_objects - 1)
    # a hidden foreground object behind a shown foreground one: where occlusions order the objects
    assert ((labels > 0) & hidden.any(-1)).any(), "the demo scene should show a foreground object in front of another"

def test_hidden_object_rays_keep_a_gap_from_the_objects_own_pixels_so_bleed_does_not_count(setup):
    model, outputs = setup
    datamanager = ShownLabels(model, outputs)  # masks of balls of radius 0.3
    truly_hidden, _ = hidden_rays_with(model, datamanager, gap=0, limit=10_000)
    model.fields.radius = 0.36  # learned silhouettes bleed past the masks
    try:
        bleeding, _ = hidden_rays_with(model, datamanager, gap=0, limit=10_000)
        rays, labels = hidden_rays_with(model, datamanager, gap=2, limit=10_000)
        # what is left lies more than the gap from the hidden object's own pixels
        assert hidden_behind(model, datamanager, rays, labels, gap=2).any(-1).all()
    finally:
        model.fields.radius = 0.3
    assert len(bleeding) > 3 * len(truly_hidden), "the bleed should read as hidden without a gap"
    assert 0 < len(labels) < len(bleeding) / 2


def test_alone_colour_error_is_least_at_the_pixels_colour_whatever_the_opacity():
    """A half-transparent object's best colour is the pixel's (the plain squared error's is brighter), and less
    opacity still costs more; an opaque object's error is the plain squared error."""
    target = torch.tensor([[0.6, 0.8, 0.9]])
    colour = target.clone().requires_grad_(True)
    for opacity in (0.3, 0.7):
        accumulation = torch.tensor([opacity])
        alone_colour_error(colour * accumulation, accumulation, target).sum().backward()
        assert colour.grad.abs().max() < 1e-7
        colour.grad = None
    at = [alone_colour_error(target * a, torch.tensor([a]), target).item() for a in (0.2, 0.5, 0.9, 1.0)]
    assert at == sorted(at, reverse=True) and at[-1] == 0.0
    rgb = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    plain = (rgb - target).pow(2).sum(-1)
    assert torch.allclose(alone_colour_error(rgb, torch.ones(5), target), plain)


@pytest.mark.parametrize("error", ["alone", "plain"])
def test_a_half_transparent_object_fits_its_colour_without_saturating(error):
    """The bootstrap's situation: an object still at opacity 0.4 on pixels of colour (0.6, 0.8, 0.9). Fitted with
    the plain squared error its colour MLP runs to white (the sigmoid's saturation, where float32 gradients vanish),
    with ``alone_colour_error`` it takes the pixels' colour."""
    torch.manual_seed(0)
    config = ObjectFieldsConfig(implementation="torch", grid_resolutions=(8, 16))
    fields = ObjectFields(1, config)
    optimizer = field_optimizer(fields)
    target = torch.tensor([0.6, 0.8, 0.9]).expand(128, 3)
    accumulation = torch.full((128,), 0.4)
    weights = accumulation[:, None] / 16  # 16 samples a ray, opacity fixed

    def render() -> torch.Tensor:
        points = torch.rand(128, 16, 3)
        directions = torch.nn.functional.normalize(torch.randn(128, 1, 3), dim=-1)
        _, rgb = fields.object_forward(0, points, directions)
        return (weights[..., None] * rgb).sum(1)

    for _ in range(300):
        optimizer.zero_grad()
        rgb = render()
        loss = alone_colour_error(rgb, accumulation, target) if error == "alone" else (rgb - target).pow(2).sum(-1)
        loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        colour = render() / accumulation[:, None]
    if error == "alone":
        assert (colour - target).abs().max() < 0.02
    else:
        assert colour.min() > 0.999
