"""Rigid transforms, pose interpolation, object-space rays and box intersection (osn_nerfstudio.core.geometry)."""

import math

import pytest
import torch

from osn_nerfstudio.core.geometry import (
    interpolate_poses,
    intersect_aabb,
    invert_rigid,
    matrix_to_quaternion,
    normalise_to_box,
    quaternion_to_matrix,
    rays_in_objects,
    slerp,
)

DTYPE = torch.float64


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 3, 3] rotations from QR of Gaussian matrices (independent of the code under test)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # flip reflections (det -1) into rotations


def random_poses(n: int, generator: torch.Generator) -> torch.Tensor:
    poses = torch.eye(4, dtype=DTYPE).repeat(n, 1, 1)
    poses[:, :3, :3] = random_rotations(n, generator)
    poses[:, :3, 3] = torch.randn(n, 3, generator=generator, dtype=DTYPE) * 3
    return poses


def axis_angle(axis, angle: float) -> torch.Tensor:
    """[3, 3] rotation by Rodrigues' formula."""
    x, y, z = (torch.tensor(axis, dtype=DTYPE) / torch.tensor(axis, dtype=DTYPE).norm()).tolist()
    cross = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=DTYPE)
    return torch.eye(3, dtype=DTYPE) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    return torch.arccos(((torch.diagonal(R, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))


def apply(pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return (pose[..., :3, :3] @ points[..., None])[..., 0] + pose[..., :3, 3]


# --------------------------------------------------------------------------------------------- quaternions


def test_matrix_quaternion_round_trip_random():
    g = torch.Generator().manual_seed(0)
    R = random_rotations(500, g)
    q = matrix_to_quaternion(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(500, dtype=DTYPE), atol=1e-12)
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-12)


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -2, 3)])
@pytest.mark.parametrize("angle", [0.0, 1e-9, 0.3, math.pi / 2, math.pi - 1e-9, math.pi])
def test_matrix_quaternion_every_branch(axis, angle):
    """Half-turns (w = 0) and tiny turns exercise each branch of the formula selection."""
    R = axis_angle(axis, angle)
    q = matrix_to_quaternion(R)
    unit_axis = torch.tensor(axis, dtype=DTYPE) / torch.tensor(axis, dtype=DTYPE).norm()
    expected = torch.cat([torch.tensor([math.cos(angle / 2)], dtype=DTYPE), math.sin(angle / 2) * unit_axis])
    assert torch.allclose(q, expected, atol=1e-9) or torch.allclose(q, -expected, atol=1e-9)
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-12)


def test_quaternion_to_matrix_round_trip_and_known_value():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(300, 4, generator=g, dtype=DTYPE)
    q = q / q.norm(dim=-1, keepdim=True)
    canonical = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(matrix_to_quaternion(quaternion_to_matrix(q)), canonical, atol=1e-12)
    # 90 degrees about z maps x to y
    quarter_z = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=DTYPE)
    assert torch.allclose(quaternion_to_matrix(quarter_z) @ torch.tensor([1.0, 0, 0], dtype=DTYPE),
                          torch.tensor([0.0, 1, 0], dtype=DTYPE), atol=1e-15)  # fmt: skip


def test_slerp_endpoints_midpoint_and_shortest_path():
    g = torch.Generator().manual_seed(2)
    q0, q1 = matrix_to_quaternion(random_rotations(2 * 64, g)).chunk(2)
    zero, one, half = (torch.full((64,), v, dtype=DTYPE) for v in (0.0, 1.0, 0.5))
    assert torch.allclose(slerp(q0, q1, zero), q0, atol=1e-14)
    end = slerp(q0, q1, one)
    # the shorter arc may end on -q1, the same rotation
    assert torch.allclose(end * torch.sign((end * q1).sum(-1, keepdim=True)), q1, atol=1e-14)
    R0, R1, Rm = quaternion_to_matrix(q0), quaternion_to_matrix(q1), quaternion_to_matrix(slerp(q0, q1, half))
    full = rotation_angle(R0.transpose(-1, -2) @ R1)
    assert torch.allclose(rotation_angle(R0.transpose(-1, -2) @ Rm), full / 2, atol=1e-9)
    assert torch.allclose(rotation_angle(Rm.transpose(-1, -2) @ R1), full / 2, atol=1e-9)
    # -q1 is the same rotation: the path, and so the result, must not change
    flipped = quaternion_to_matrix(slerp(q0, -q1, half))
    assert torch.allclose(flipped, Rm, atol=1e-12)


def test_slerp_nearly_equal_quaternions_is_finite_with_finite_gradients():
    q0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]], dtype=DTYPE)
    q1 = (q0 + torch.tensor([[0.0, 1e-9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=DTYPE)).requires_grad_(True)
    w = torch.tensor([0.3, 0.7], dtype=DTYPE)
    q = slerp(q0, q1, w)
    assert torch.isfinite(q).all()
    assert torch.allclose(q, q0, atol=1e-8)
    q.sum().backward()
    assert torch.isfinite(q1.grad).all()


# --------------------------------------------------------------------------------------------- poses


def test_invert_rigid_matches_general_inverse():
    poses = random_poses(20, torch.Generator().manual_seed(3))
    assert torch.allclose(invert_rigid(poses), torch.linalg.inv(poses), atol=1e-12)
    assert torch.allclose(invert_rigid(poses) @ poses, torch.eye(4, dtype=DTYPE).expand(20, 4, 4), atol=1e-12)


def make_trajectories(K: int = 3, F: int = 5, seed: int = 4):
    poses = random_poses(K * F, torch.Generator().manual_seed(seed)).reshape(K, F, 4, 4)
    return poses, torch.ones(K, F, dtype=torch.bool)


def test_interpolate_poses_integer_indices_are_exact():
    poses, registered = make_trajectories()
    index = torch.tensor([0.0, 3.0, 4.0, 1.0])
    pose, present = interpolate_poses(poses, registered, index)
    assert pose.shape == (4, 3, 4, 4) and present.all()
    assert torch.equal(pose, poses[:, [0, 3, 4, 1]].transpose(0, 1))


def test_interpolate_poses_midpoint_is_geodesic_midpoint():
    poses, registered = make_trajectories()
    pose, _ = interpolate_poses(poses, registered, torch.tensor([1.5]))
    R1, R2, Rm = poses[:, 1, :3, :3], poses[:, 2, :3, :3], pose[0, :, :3, :3]
    # the midpoint rotation splits the relative rotation into two equal halves
    assert torch.allclose(R1.transpose(-1, -2) @ Rm, Rm.transpose(-1, -2) @ R2, atol=1e-10)
    assert torch.allclose(torch.linalg.det(Rm), torch.ones(3, dtype=DTYPE), atol=1e-12)
    assert torch.allclose(pose[0, :, :3, 3], (poses[:, 1, :3, 3] + poses[:, 2, :3, 3]) / 2, atol=1e-12)
    assert torch.equal(pose[0, :, 3], torch.tensor([0.0, 0, 0, 1], dtype=DTYPE).expand(3, 4))


def test_interpolate_poses_fraction_follows_the_geodesic():
    poses, registered = make_trajectories()
    pose, _ = interpolate_poses(poses, registered, torch.tensor([2.25]))
    R2, R3, R = poses[:, 2, :3, :3], poses[:, 3, :3, :3], pose[0, :, :3, :3]
    full = rotation_angle(R2.transpose(-1, -2) @ R3)
    assert torch.allclose(rotation_angle(R2.transpose(-1, -2) @ R), 0.25 * full, atol=1e-9)
    assert torch.allclose(pose[0, :, :3, 3], 0.75 * poses[:, 2, :3, 3] + 0.25 * poses[:, 3, :3, 3], atol=1e-12)


def test_interpolate_poses_presence_with_unregistered_neighbours():
    poses, registered = make_trajectories(K=2, F=4)
    registered[1, 2] = False
    poses[1, 2] = float("nan")  # the scene format stores NaN where not registered
    index = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0, 0.5])
    pose, present = interpolate_poses(poses, registered, index)
    assert present[:, 0].all()
    # frame 2 carries weight at 1.5, 2.0, 2.5; at 1.0 and 3.0 it is a neighbour with weight 0 or none
    assert present[:, 1].tolist() == [True, False, False, False, True, True]
    assert torch.isfinite(pose).all()
    assert torch.equal(pose[1:4, 1], torch.eye(4, dtype=DTYPE).expand(3, 4, 4))
    assert torch.equal(pose[0, 1], poses[1, 1])
    assert torch.equal(pose[4, 1], poses[1, 3])


def test_interpolate_poses_clamps_to_the_video():
    poses, registered = make_trajectories(F=4)
    pose, present = interpolate_poses(poses, registered, torch.tensor([-2.5, 3.0, 7.2]))
    assert present.all()
    assert torch.equal(pose[0], poses[:, 0])
    assert torch.equal(pose[1], poses[:, 3])
    assert torch.equal(pose[2], poses[:, 3])


def test_interpolate_poses_single_frame():
    poses, registered = make_trajectories(F=1)
    pose, present = interpolate_poses(poses, registered, torch.tensor([0.0, 0.4]))
    assert present.all() and torch.equal(pose[1], poses[:, 0])


# --------------------------------------------------------------------------------------------- object rays


def explicit_object_point(point_bg, camera_to_background, camera_to_object, scale):
    """x = P_k · ((P_0⁻¹ · X_bg) / s_k), one point at a time, with a general matrix inverse."""
    camera_point = apply(torch.linalg.inv(camera_to_background), point_bg)
    return apply(camera_to_object, camera_point / scale)


def camera_rays(camera_to_background: torch.Tensor, n: int, generator: torch.Generator):
    """Rays from a camera's centre along random unit camera-space directions looking down -z."""
    directions_camera = torch.randn(n, 3, generator=generator, dtype=DTYPE) * 0.3
    directions_camera[:, 2] = -1
    directions_camera = directions_camera / directions_camera.norm(dim=-1, keepdim=True)
    origins = camera_to_background[:3, 3].expand(n, 3)
    directions = directions_camera @ camera_to_background[:3, :3].T
    return origins, directions, directions_camera


def test_training_view_unscaled_maps_camera_points_by_object_pose():
    g = torch.Generator().manual_seed(5)
    P = random_poses(3, g)  # P_0(v), P_1(v), P_2(v)
    origins, directions, directions_camera = camera_rays(P[0], 8, g)
    o_k, d_k = rays_in_objects(origins, directions, P[0].expand(8, 4, 4), P.expand(8, 3, 4, 4), torch.ones(3))
    for t in (0.5, 2.0, 7.0):
        assert torch.allclose(o_k + t * d_k, apply(P[None], t * directions_camera[:, None]), atol=1e-12)
    # the background's own ray is the world ray itself
    assert torch.allclose(o_k[:, 0], origins, atol=1e-12) and torch.allclose(d_k[:, 0], directions, atol=1e-12)


def test_training_view_scaled_matches_explicit_formula():
    g = torch.Generator().manual_seed(6)
    P = random_poses(3, g)
    scales = torch.tensor([1.0, 0.4, 2.5], dtype=DTYPE)
    origins, directions, directions_camera = camera_rays(P[0], 8, g)
    o_k, d_k = rays_in_objects(origins, directions, P[0].expand(8, 4, 4), P.expand(8, 3, 4, 4), scales)
    for t in (0.5, 2.0, 7.0):
        tau = t / scales
        mapped = o_k + tau[None, :, None] * d_k
        for r in range(8):
            for k in range(3):
                point_bg = origins[r] + t * directions[r]
                assert torch.allclose(mapped[r, k], explicit_object_point(point_bg, P[0], P[k], scales[k]), atol=1e-12)
                # training mapping: camera-frame point X = t d_cam, x = P_k (X / s_k)
                assert torch.allclose(mapped[r, k], apply(P[k], t * directions_camera[r] / scales[k]), atol=1e-12)


def test_novel_camera_matches_explicit_formula():
    g = torch.Generator().manual_seed(7)
    P = random_poses(3, g)
    camera = random_poses(1, g)[0]  # any camera-to-background pose, not the training one
    scales = torch.tensor([[1.0, 0.7, 1.9]], dtype=DTYPE)  # [1, K] broadcasts over rays
    origins, directions, _ = camera_rays(camera, 6, g)
    o_k, d_k = rays_in_objects(origins, directions, P[0].expand(6, 4, 4), P.expand(6, 3, 4, 4), scales)
    assert torch.allclose(d_k.norm(dim=-1), torch.ones(6, 3, dtype=DTYPE), atol=1e-12)
    for t in (0.1, 3.0):
        for r in range(6):
            for k in range(3):
                expected = explicit_object_point(origins[r] + t * directions[r], P[0], P[k], scales[0, k])
                assert torch.allclose(o_k[r, k] + t / scales[0, k] * d_k[r, k], expected, atol=1e-12)


def test_per_ray_poses_and_scales():
    """Rays at different time steps carry their own poses and configurations."""
    g = torch.Generator().manual_seed(8)
    P = random_poses(4 * 2, g).reshape(4, 2, 4, 4)  # ray r at its own time step
    scales = torch.tensor([[1.0, 0.5], [1.0, 1.5], [1.0, 3.0], [1.0, 0.2]], dtype=DTYPE)
    origins = torch.randn(4, 3, generator=g, dtype=DTYPE)
    directions = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=DTYPE), dim=-1)
    o_k, d_k = rays_in_objects(origins, directions, P[:, 0], P, scales)
    for r in range(4):
        expected = explicit_object_point(origins[r] + 2.0 * directions[r], P[r, 0], P[r, 1], scales[r, 1])
        assert torch.allclose(o_k[r, 1] + 2.0 / scales[r, 1] * d_k[r, 1], expected, atol=1e-12)


# --------------------------------------------------------------------------------------------- boxes


def aabb(origins, directions, lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0)):
    o = torch.tensor(origins, dtype=DTYPE)
    d = torch.tensor(directions, dtype=DTYPE)
    return intersect_aabb(o, d, torch.tensor(lo, dtype=DTYPE).expand_as(o), torch.tensor(hi, dtype=DTYPE).expand_as(o))


def test_intersect_aabb_hand_cases():
    near, far, hit = aabb(
        [[0.0, 0, 5], [0.5, 0.5, 5], [3.0, 0, 5], [0, 0, 0], [0, 0, 0.5], [0, 0, 5], [0.0, 0, -5], [-3, -3, 0]],
        [[0.0, 0, -1], [0.0, 0, -2], [0.0, 0, -1], [1, 0, 0], [0, 0, -1], [0, 0, 1], [0.0, 0, -1], [1, 1, 0]],
    )
    # down -z through the centre; speed 2 halves the distances; off to the side; from inside (twice);
    # box behind (looking away, and having passed it); diagonal in the xy-plane
    assert hit.tolist() == [True, True, False, True, True, False, False, True]
    assert torch.allclose(near, torch.tensor([4.0, 2.0, 0, 0, 0, 0, 0, 2.0], dtype=DTYPE))
    assert torch.allclose(far, torch.tensor([6.0, 3.0, 0, 1.0, 1.5, 0, 0, 4.0], dtype=DTYPE))


def test_intersect_aabb_zero_direction_components():
    # parallel to x and y slabs: inside them hits, outside misses, exactly on a face still counts as inside
    near, far, hit = aabb(
        [[0.2, -0.3, 5], [1.5, 0.0, 5], [1.0, 0.0, 5], [0.0, 0.0, 5]],
        [[0.0, 0.0, -1], [0.0, 0.0, -1], [0.0, 0.0, -1], [0.0, 0.0, 0.0]],
    )
    assert torch.isfinite(near).all() and torch.isfinite(far).all()
    assert hit[:3].tolist() == [True, False, True]
    assert near[:3].tolist() == [4.0, 0.0, 4.0] and far[:3].tolist() == [6.0, 0.0, 6.0]
    assert not hit[3]  # a zero direction outside the box never reaches it


def test_intersect_aabb_offset_box_and_batch_shape():
    o = torch.zeros(2, 5, 3, dtype=DTYPE)
    d = torch.tensor([1.0, 0, 0], dtype=DTYPE).expand(2, 5, 3)
    lo = torch.tensor([2.0, -1, -1], dtype=DTYPE).expand(2, 5, 3)
    hi = torch.tensor([3.0, 1, 1], dtype=DTYPE).expand(2, 5, 3)
    near, far, hit = intersect_aabb(o, d, lo, hi)
    assert near.shape == (2, 5) and hit.all()
    assert (near == 2.0).all() and (far == 3.0).all()


def test_normalise_to_box():
    lo = torch.tensor([-1.0, 0.0, 2.0])
    hi = torch.tensor([1.0, 4.0, 3.0])
    points = torch.stack([lo, hi, (lo + hi) / 2, torch.tensor([3.0, 0.0, 2.0])])
    expected = torch.tensor([[0.0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [2, 0, 0]])
    assert torch.allclose(normalise_to_box(points, lo, hi), expected)
