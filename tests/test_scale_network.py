"""Object scale network: normalisation, learning a known valid region, sampling, fallback, checkpoint resume."""

import io
import math

import pytest
import torch

from osn_nerfstudio.core.scale_ranges import ScaleRanges
from osn_nerfstudio.scale_network import ObjectScaleNetwork, ScaleNetworkConfig


@pytest.fixture(autouse=True)
def one_thread():
    """The network's matrices are tiny: a second intra-op thread only adds synchronisation, which on a shared
    2-core machine made a 0.5 s fit take up to 50 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RANGE = torch.tensor([[1.0, 1.0], [0.1, 10.0], [0.5, 4.0]])


def occlusion_order(u: torch.Tensor) -> torch.Tensor:
    """Valid iff object 1 is relatively nearer than object 2, as an occlusion in the video would require."""
    return u[:, 0] < u[:, 1]


def small_box(u: torch.Tensor) -> torch.Tensor:
    """A valid region covering 9% of the ranges."""
    return (u[:, 0] > 0.2) & (u[:, 0] < 0.5) & (u[:, 1] > 0.6) & (u[:, 1] < 0.9)


def test_normalise_denormalise_round_trip():
    ranges = ScaleRanges(RANGE)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(100, 2, generator=g)
    scales = ranges.denormalise(u)
    assert scales.shape == (100, 3)
    assert torch.equal(scales[:, 0], torch.ones(100))
    torch.testing.assert_close(ranges.normalise(scales), u)
    assert ((scales[:, 1:] >= RANGE[1:, 0]) & (scales[:, 1:] <= RANGE[1:, 1])).all()


def test_range_ends_map_to_unit_interval_ends_and_midpoint_to_geometric_mean():
    ranges = ScaleRanges(RANGE)
    torch.testing.assert_close(ranges.normalise(RANGE.T.contiguous()), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    middle = ranges.denormalise(torch.full((2,), 0.5))
    torch.testing.assert_close(middle, torch.tensor([1.0, 1.0, math.sqrt(2.0)]))


def test_bad_ranges_name_the_object():
    with pytest.raises(ValueError, match="object 2"):
        ScaleRanges(torch.tensor([[1.0, 1.0], [0.1, 10.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="background"):
        ScaleRanges(torch.tensor([[0.5, 2.0], [0.1, 10.0]]))


@pytest.mark.parametrize("region", [occlusion_order, small_box])
def test_network_learns_a_known_valid_region(region):
    torch.manual_seed(0)
    net = ObjectScaleNetwork(RANGE, ScaleNetworkConfig(lr=5e-3, batch_size=1024))
    g = torch.Generator().manual_seed(1)
    u = net.draw_uniform(4096, g)
    stats = net.fit(u, region(u), steps=500, generator=g)
    assert stats["accuracy"] > 0.95

    fresh = net.draw_uniform(20000, g)
    accuracy = ((net(fresh) > 0) == region(fresh)).float().mean()
    assert accuracy > 0.95
    torch.testing.assert_close(net.probability(net.ranges.denormalise(fresh)), torch.sigmoid(net(fresh)))

    drawn = net.sample(1000, g)
    assert not drawn.fell_back and drawn.message == ""
    assert drawn.scales.shape == (1000, 3) and (drawn.probability > 0.5).all()
    assert region(drawn.u).float().mean() > 0.9
    torch.testing.assert_close(net.ranges.normalise(drawn.scales), drawn.u)


def test_class_balance_finds_a_tiny_valid_region():
    def tiny_box(u):  # about 2% of the ranges: unweighted BCE learns "always invalid" here
        return (u[:, 0] > 0.45) & (u[:, 0] < 0.6) & (u[:, 1] > 0.3) & (u[:, 1] < 0.45)

    torch.manual_seed(0)
    net = ObjectScaleNetwork(RANGE, ScaleNetworkConfig(batch_size=256))
    g = torch.Generator().manual_seed(0)
    u = net.draw_uniform(4096, g)
    labels = tiny_box(u)
    stats = net.fit(u, labels, steps=200, generator=g)
    assert stats["pos_weight"] == pytest.approx((~labels).sum().item() / labels.sum().item())
    assert stats["balanced_accuracy"] > 0.95


def test_fit_trains_when_called_under_inference_mode():
    net = ObjectScaleNetwork(RANGE)
    before = net.mlp[0].weight.clone()
    with torch.inference_mode():
        u = net.draw_uniform(64)
        net.fit(u, occlusion_order(u), steps=3)
    assert not torch.equal(net.mlp[0].weight, before)


def test_untrained_region_makes_sampling_fall_back_without_failing():
    net = ObjectScaleNetwork(RANGE, ScaleNetworkConfig(max_candidates=120))
    with torch.no_grad():
        net.mlp[-1].bias.fill_(-1e3)
    drawn = net.sample(10, torch.Generator().manual_seed(0), candidates_per_sample=4)
    # rounds of 40 and 80 candidates spend the budget
    assert drawn.fell_back and "0 of 120" in drawn.message
    assert drawn.scales.shape == (10, 3) and drawn.u.shape == (10, 2)
    assert (drawn.probability < 0.5).all()
    # the best-scored candidates, best first
    assert torch.equal(drawn.probability, drawn.probability.sort(descending=True).values)


def test_a_thin_valid_set_is_learned_in_its_own_frame_and_sampled_from_its_proposal():
    import math

    from osn_nerfstudio.core.valid_set import ValidSet, unbounded

    # 1 < s_1 / s_2 < 1.03: a slab that fills under 1 % of the scale ranges
    upper = unbounded(3)
    upper[1, 2], upper[2, 1] = math.log(1.03), 0.0
    valid = ValidSet.from_constraints(upper, RANGE.double())
    torch.manual_seed(0)
    net = ObjectScaleNetwork(RANGE, ScaleNetworkConfig(max_candidates=4096))
    g = torch.Generator().manual_seed(0)
    inside = net.ranges.normalise(valid.sample(4096, g)).float()
    near = (inside + 0.01 * torch.randn(inside.shape, generator=g)).clamp(0, 1)
    u = torch.cat([net.draw_uniform(4096, g), inside, near])
    labels = valid.contains(net.ranges.denormalise(u.double()))
    net.set_input_frame(u[labels])
    net.fit(u, labels, steps=1000, generator=g)
    net.set_proposal(valid)
    drawn = net.sample(500, g)
    assert not drawn.fell_back
    # proposals come from the set grown by the margin; the network keeps the ones inside
    assert ValidSet(net.proposal_bounds).contains(drawn.scales.double()).all()
    assert valid.contains(drawn.scales.double()).float().mean() > 0.9
    fresh = net.ranges.normalise(valid.sample(2000, torch.Generator().manual_seed(9))).float()
    assert (net(fresh) > 0).float().mean() > 0.9
    # an empty set sends sampling back to the scale ranges, and no members back to the unit cube's frame
    upper[2, 1] = -1.0
    net.set_proposal(ValidSet.from_constraints(upper, RANGE.double()))
    assert torch.equal(net.proposal_bounds, ValidSet.from_constraints(unbounded(3), RANGE.double()).closed().bounds)
    net.set_input_frame(u[:0])
    assert net.input_offset.tolist() == [0.5, 0.5] and torch.equal(net.input_transform, 2 * torch.eye(2))


def train(net: ObjectScaleNetwork, generator: torch.Generator, steps: int) -> None:
    u = net.draw_uniform(512, generator)
    net.fit(u, occlusion_order(u), steps=steps, generator=generator)


def test_optimiser_state_survives_a_checkpoint():
    config = ScaleNetworkConfig(batch_size=64)
    torch.manual_seed(0)
    uninterrupted = ObjectScaleNetwork(RANGE, config)
    first = ObjectScaleNetwork(RANGE, config)
    first.load_state_dict(uninterrupted.state_dict())
    g_uninterrupted, g_resumed = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    train(uninterrupted, g_uninterrupted, 20)
    train(uninterrupted, g_uninterrupted, 20)
    train(first, g_resumed, 20)

    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = ObjectScaleNetwork(RANGE, config)
    resumed.load_state_dict(checkpoint)
    assert resumed.optimizer.state_dict()["state"], "the Adam moments must come back"
    parameters_only = ObjectScaleNetwork(RANGE, config)
    parameters = {name: value for name, value in checkpoint.items() if not name.endswith("_extra_state")}
    parameters_only.load_state_dict(parameters, strict=False)
    g_parameters_only = torch.Generator()
    g_parameters_only.set_state(g_resumed.get_state())
    train(resumed, g_resumed, 20)
    train(parameters_only, g_parameters_only, 20)

    for name, value in uninterrupted.state_dict().items():
        if not name.endswith("_extra_state"):
            torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    # without the optimiser's moments the same steps go elsewhere: the comparison above can fail
    assert not torch.equal(parameters_only.mlp[0].weight, uninterrupted.mlp[0].weight)


def test_background_only_scene_has_one_valid_configuration():
    net = ObjectScaleNetwork(torch.ones(1, 2))
    drawn = net.sample(5)
    assert not drawn.fell_back
    assert torch.equal(drawn.scales, torch.ones(5, 1)) and drawn.u.shape == (5, 0)
    assert torch.equal(net.probability(torch.ones(3, 1)), torch.ones(3))
    stats = net.fit(torch.zeros(4, 0), torch.ones(4, dtype=torch.bool))
    assert stats["accuracy"] == 1.0
    net.load_state_dict(net.state_dict())
