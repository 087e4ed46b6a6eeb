"""Rigid transforms, pose interpolation, and rays expressed in each object's own frame and units.

Pure torch, no nerfstudio import. Poses are 4x4 ``[[R, t], [0, 0, 0, 1]]``; quaternions are (w, x, y, z).
The world frame is the background's frame (object 0), in background units (docs/scene-format.md).
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def matrix_to_quaternion(R: Float[Tensor, "*bs 3 3"]) -> Float[Tensor, "*bs 4"]:
    """Unit quaternion (w, x, y, z), w >= 0, of each rotation matrix.

    Uses whichever of the four textbook formulas divides by the largest of |w|, |x|, |y|, |z| (Shepperd's
    method), so no branch divides by a near-zero component.
    """
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4w², 4x², 4y², 4z² from the diagonal; they sum to 4, so the largest is >= 1
    four_squares = torch.stack(
        [1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], dim=-1
    )
    # row i is 4·q_i·q: the quaternion scaled by four times its i-th component
    candidates = torch.stack(
        [
            torch.stack([four_squares[..., 0], r21 - r12, r02 - r20, r10 - r01], dim=-1),
            torch.stack([r21 - r12, four_squares[..., 1], r10 + r01, r02 + r20], dim=-1),
            torch.stack([r02 - r20, r10 + r01, four_squares[..., 2], r21 + r12], dim=-1),
            torch.stack([r10 - r01, r20 + r02, r21 + r12, four_squares[..., 3]], dim=-1),
        ],
        dim=-2,
    )
    # the clamp only guards the branches that are not selected below
    candidates = candidates / (2.0 * four_squares.clamp_min(0.1).sqrt())[..., None]
    best = four_squares.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    # q and -q are the same rotation; pick w >= 0 so results are deterministic
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Float[Tensor, "*bs 4"]) -> Float[Tensor, "*bs 3 3"]:
    """Rotation matrix of each quaternion (w, x, y, z); the quaternion need not be unit length."""
    w, x, y, z = q.unbind(-1)
    # 2/|q|² normalises implicitly, so slightly non-unit inputs still give a rotation
    two_s = 2.0 / (q * q).sum(-1)
    rows = [
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def slerp(q0: Float[Tensor, "*bs 4"], q1: Float[Tensor, "*bs 4"], w: Float[Tensor, "*bs"]) -> Float[Tensor, "*bs 4"]:
    """Spherical linear interpolation from unit quaternion ``q0`` (w=0) to ``q1`` (w=1) along the shorter arc.

    Nearly equal quaternions fall back to a normalised linear interpolation, where the slerp ratio
    sin(w θ)/sin θ would divide by almost zero.
    """
    dot = (q0 * q1).sum(-1)
    # q1 and -q1 are the same rotation: flip to the one on q0's side for the shorter arc
    q1 = torch.where(dot[..., None] < 0, -q1, q1)
    dot = dot.abs()
    nearly_equal = dot > 1.0 - 1e-6
    # arccos has an infinite slope at 1: keep that branch's input away from it so gradients stay finite
    theta = torch.arccos(torch.where(nearly_equal, torch.zeros_like(dot), dot))
    sin_theta = torch.sin(theta)
    c0 = torch.where(nearly_equal, 1.0 - w, torch.sin((1.0 - w) * theta) / sin_theta)
    c1 = torch.where(nearly_equal, w, torch.sin(w * theta) / sin_theta)
    q = c0[..., None] * q0 + c1[..., None] * q1
    return q / q.norm(dim=-1, keepdim=True)


def rigid_from(rotation: Float[Tensor, "*bs 3 3"], translation: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 4 4"]:
    """4x4 homogeneous pose ``[[rotation, translation], [0, 0, 0, 1]]``."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def invert_rigid(T: Float[Tensor, "*bs 4 4"]) -> Float[Tensor, "*bs 4 4"]:
    """Inverse of a rigid pose, ``[[Rᵀ, -Rᵀ t], [0, 1]]`` (exact and cheaper than a general inverse)."""
    rotation_t = T[..., :3, :3].transpose(-1, -2)
    return rigid_from(rotation_t, -(rotation_t @ T[..., :3, 3:])[..., 0])


def neighbouring_frames(
    frame_index: Float[Tensor, "*bs"], num_frames: int
) -> Tuple[Int[Tensor, "*bs"], Int[Tensor, "*bs"], Float[Tensor, "*bs"]]:
    """The frames before and after each fractional frame position (clamped to [0, F-1]) and the weight of the one
    after: a value at the position is ``(1 - weight) * value[before] + weight * value[after]``. An integer position
    has weight 0 and its own frame before."""
    index = frame_index.clamp(0, num_frames - 1)
    before = index.floor().long()
    after = (before + 1).clamp(max=num_frames - 1)
    return before, after, index - before.to(index.dtype)


def interpolate_poses(
    poses: Float[Tensor, "K F 4 4"], registered: Bool[Tensor, "K F"], frame_index: Float[Tensor, " R"]
) -> Tuple[Float[Tensor, "R K 4 4"], Bool[Tensor, "R K"]]:
    """Every object's pose at fractional frame positions, and whether the object is present there.

    Between the floor and ceil frames the rotation is slerped and the translation lerped; ``frame_index``
    is clamped to [0, F-1] and an integer index returns the stored pose exactly. An object is absent where
    a neighbouring frame that carries weight (> 0) is unregistered; its pose there is the identity, a
    finite placeholder so that downstream ray maths stays finite (mask with ``present``).
    """
    floor, ceil, weight = neighbouring_frames(frame_index, poses.shape[1])
    weight = weight.to(poses.dtype)[:, None].expand(-1, poses.shape[0])  # [R, K]

    pose_floor = poses[:, floor].transpose(0, 1)  # [R, K, 4, 4]
    pose_ceil = poses[:, ceil].transpose(0, 1)
    # convert the K·F stored rotations once rather than two per ray
    quaternions = matrix_to_quaternion(poses[..., :3, :3])  # [K, F, 4]
    slerped = slerp(quaternions[:, floor].transpose(0, 1), quaternions[:, ceil].transpose(0, 1), weight)
    rotation = quaternion_to_matrix(slerped)
    translation = torch.lerp(pose_floor[..., :3, 3], pose_ceil[..., :3, 3], weight[..., None])
    on_frame = (weight == 0)[..., None, None]
    # the quaternion round trip is not bit exact; stored poses are returned as they are
    pose = torch.where(on_frame, pose_floor, rigid_from(rotation, translation))

    present = registered[:, floor].T & (registered[:, ceil].T | (weight == 0))
    identity = torch.eye(4, dtype=poses.dtype, device=poses.device)
    return torch.where(present[..., None, None], pose, identity), present


def rays_in_objects(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    camera_to_background: Float[Tensor, "R 4 4"],
    camera_to_object: Float[Tensor, "R K 4 4"],
    scales: Float[Tensor, "*sbs K"],
) -> Tuple[Float[Tensor, "R K 3"], Float[Tensor, "R K 3"]]:
    """Each world ray ``o + t d`` (background frame and units) as a ray ``o_k + τ d_k`` in every object.

    A world point X maps into object k as ``x = P_k · ((P_0⁻¹ · X) / s_k)`` (docs/method.md), which is the
    object-space ray with ``o_k = P_k · ((P_0⁻¹ o) / s_k)`` and ``d_k = R_k R_0ᵀ d`` (unit if d is), and
    ``τ = t / s_k`` the distance along it in object units. ``scales`` broadcasts to [R, K].
    """
    background_to_camera = invert_rigid(camera_to_background)
    rotation_to_camera = background_to_camera[:, :3, :3]
    origins_camera = (rotation_to_camera @ origins[..., None])[..., 0] + background_to_camera[:, :3, 3]  # [R, 3]
    directions_camera = (rotation_to_camera @ directions[..., None])[..., 0]

    rotation_to_object = camera_to_object[..., :3, :3]  # [R, K, 3, 3]
    # scaling about the camera centre: the camera-space origin shrinks by s_k before the rigid map
    origins_scaled = origins_camera[:, None, :] / scales[..., None]  # [R, K, 3]
    object_origins = (rotation_to_object @ origins_scaled[..., None])[..., 0] + camera_to_object[..., :3, 3]
    object_directions = (rotation_to_object @ directions_camera[:, None, :, None])[..., 0]
    return object_origins, object_directions


def intersect_aabb(
    origins: Float[Tensor, "*bs 3"],
    directions: Float[Tensor, "*bs 3"],
    bbox_min: Float[Tensor, "*bs 3"],
    bbox_max: Float[Tensor, "*bs 3"],
) -> Tuple[Float[Tensor, "*bs"], Float[Tensor, "*bs"], Bool[Tensor, "*bs"]]:
    """Where each ray ``o + τ d`` (τ >= 0) crosses an axis-aligned box: ``(τ_near, τ_far, hit)``.

    Slab method. ``τ_near`` is clamped at 0 so a ray starting inside the box starts at 0. ``hit`` is False
    where the ray misses the box or the box lies behind the origin; both distances are 0 there so samples
    drawn for missed rays stay finite.
    """
    parallel = directions == 0
    # a ray parallel to a slab lies inside it for all τ or for none; avoid 0/0 = nan in those slabs
    safe_directions = torch.where(parallel, torch.ones_like(directions), directions)
    t_to_min = (bbox_min - origins) / safe_directions
    t_to_max = (bbox_max - origins) / safe_directions
    inside_slab = (origins >= bbox_min) & (origins <= bbox_max)
    infinity = torch.full_like(t_to_min, float("inf"))
    slab_entry = torch.where(parallel, torch.where(inside_slab, -infinity, infinity), torch.minimum(t_to_min, t_to_max))
    slab_exit = torch.where(parallel, torch.where(inside_slab, infinity, -infinity), torch.maximum(t_to_min, t_to_max))
    near = slab_entry.amax(dim=-1).clamp_min(0.0)
    far = slab_exit.amin(dim=-1)
    hit = far > near
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


def normalise_to_box(
    points: Float[Tensor, "*bs 3"], bbox_min: Float[Tensor, "*bs 3"], bbox_max: Float[Tensor, "*bs 3"]
) -> Float[Tensor, "*bs 3"]:
    """Points mapped affinely so the box becomes [0, 1]³ (points outside the box land outside [0, 1]³)."""
    return (points - bbox_min) / (bbox_max - bbox_min)
