"""The valid configurations as a polytope in log-scale: bounds on differences of log-scales (docs/method.md).

Pure torch, no nerfstudio import. Object l wins a supervision ray against a competitor k iff ``s_l d_l < s_k d_k``,
i.e. ``x_l - x_k < log d_k - log d_l`` with ``x = log s``. Every constraint the video gives bounds the difference of
two log-scales, so the configurations that satisfy a set of them, within the scale ranges, form a *difference-bound
polytope*: ``{x : x_i - x_j <= D[i, j] for all i, j}`` with ``x_0 = 0`` (the background). Such a set is described
exactly by its K x K bound matrix, tests membership in O(K^2), and its tightest bounds (every implied bound, and
whether it is empty) follow from a shortest-path closure over the K objects.

:class:`ValidSet` holds that matrix; ``core/validity.py`` builds it from a supervision cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

EMPTY_EPSILON = 1e-9
"""A closed polytope is empty when a bound cycle sums below minus this (log-scale; round-off allowance)."""


def unbounded(num_objects: int) -> Float[Tensor, "K K"]:
    """A bound matrix that bounds nothing (every entry inf)."""
    return torch.full((num_objects, num_objects), math.inf, dtype=torch.float64)


@dataclass
class ValidSet:
    """``{s : log s_i - log s_j <= bounds[i, j]}`` with ``s_0 = 1``; ``bounds[i, j] = inf`` where nothing bounds it.

    ``bounds`` includes the scale ranges (``bounds[k, 0] = log hi_k``, ``bounds[0, k] = -log lo_k``), so every
    member lies inside them. Float64 throughout: the bounds are differences of log-depths.
    """

    bounds: Float[Tensor, "K K"]

    @staticmethod
    def from_constraints(upper: Float[Tensor, "K K"], scale_range: Float[Tensor, "K 2"]) -> "ValidSet":
        """The set of ``x_i - x_j < upper[i, j]`` (inf: unconstrained) inside the scale ranges [lo_k, hi_k]."""
        bounds = upper.double().clone()
        log_range = scale_range.double().log()
        bounds[1:, 0] = torch.minimum(bounds[1:, 0], log_range[1:, 1])
        bounds[0, 1:] = torch.minimum(bounds[0, 1:], -log_range[1:, 0])
        bounds.fill_diagonal_(0.0)
        return ValidSet(bounds)

    @property
    def num_objects(self) -> int:
        return self.bounds.shape[0]

    def margins(self, scales: Float[Tensor, "C K"]) -> Float[Tensor, " C"]:
        """Smallest slack ``bounds[i, j] - (x_i - x_j)`` over all bounds: >= 0 inside, the log-scale distance by which
        the worst bound is exceeded (negated) outside."""
        x = scales.double().log().to(self.bounds.device)
        x = x - x[:, :1]  # the background's scale is 1; configurations are relative to it
        slack = self.bounds[None] - (x[:, :, None] - x[:, None, :])
        if self.num_objects == 1:  # the background alone: its only configuration is valid
            return slack.new_full((len(slack),), math.inf)
        off_diagonal = ~torch.eye(self.num_objects, dtype=torch.bool, device=slack.device)
        return slack[:, off_diagonal].amin(-1)

    def contains(self, scales: Float[Tensor, "C K"]) -> Bool[Tensor, " C"]:
        return self.margins(scales) >= 0

    def closed(self) -> "ValidSet":
        """The same set with every bound as tight as the others imply (Floyd-Warshall over the K objects)."""
        bounds = self.bounds.clone()
        for m in range(self.num_objects):
            bounds = torch.minimum(bounds, bounds[:, m : m + 1] + bounds[m : m + 1, :])
        return ValidSet(bounds)

    def is_empty(self) -> bool:
        """True when no configuration satisfies every bound (some cycle of bounds sums below zero)."""
        return bool(self.closed().bounds.diagonal().min() < -EMPTY_EPSILON)

    def log_box(self) -> Tuple[Float[Tensor, " K"], Float[Tensor, " K"]]:
        """Smallest and largest log-scale of each object over the set (tight: from the closed bounds)."""
        bounds = self.closed().bounds
        return -bounds[0], bounds[:, 0]

    def interior_point(self) -> Float[Tensor, " K"]:
        """A member of a non-empty set, away from its faces: each object's log-scale in turn at the middle of the
        interval that the bounds and the objects already placed leave it (a closed bound matrix always leaves one)."""
        bounds = self.closed().bounds
        x = torch.zeros(self.num_objects, dtype=bounds.dtype, device=bounds.device)
        for k in range(1, self.num_objects):
            low = (x[:k] - bounds[:k, k]).max()
            high = (x[:k] + bounds[k, :k]).min()
            x[k] = (low + high) / 2
        return x

    def sample(
        self, n: int, generator: torch.Generator, proposals: int = 1 << 20, steps: int = 30
    ) -> Float[Tensor, "n K"]:
        """``n`` members of a non-empty set as scales, approximately uniform.

        Rejection from the set's bounding box (exactly uniform) while up to ``proposals`` candidates find enough;
        a thin set with fewer members among them fills up by hit-and-run walks of ``steps`` steps, started from the
        members found (or from :meth:`interior_point`).
        """
        if self.is_empty():
            raise ValueError("cannot sample an empty valid set")
        low, high = self.log_box()
        found, drawn = [], 0
        chunk = min(proposals, max(4 * n, 1 << 16))
        while drawn < proposals and sum(len(f) for f in found) < n:
            u = torch.rand(chunk, self.num_objects, generator=generator, dtype=torch.float64)
            x = low + u * (high - low)
            found.append(x[self.contains(x.exp())])
            drawn += chunk
        members = torch.cat(found)
        if len(members) >= n:
            return members[:n].exp()
        starts = members if len(members) else self.interior_point()[None]
        rows = torch.randint(len(starts), (n - len(members),), generator=generator)
        walked = self.walk(starts[rows], steps, generator)
        return torch.cat([members, walked]).exp()

    def walk(self, x: Float[Tensor, "n K"], steps: int, generator: torch.Generator) -> Float[Tensor, "n K"]:
        """Hit-and-run: ``steps`` moves of every log-configuration ``x`` (members) to a uniform point on the chord of
        the set through it along a random direction (the background's coordinate stays 0)."""
        bounds = self.closed().bounds
        for _ in range(steps):
            direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            direction[:, 0] = 0.0
            rate = direction[:, :, None] - direction[:, None, :]  # d(x_i - x_j)/dt
            room = (bounds[None] - (x[:, :, None] - x[:, None, :])).clamp_min(0.0)
            limit = room / rate  # inf or nan where rate is 0: masked below
            t_high = torch.where(rate > 0, limit, torch.full_like(limit, math.inf)).flatten(1).amin(-1)
            t_low = torch.where(rate < 0, limit, torch.full_like(limit, -math.inf)).flatten(1).amax(-1)
            t = t_low + torch.rand(len(x), generator=generator, dtype=x.dtype) * (t_high - t_low)
            x = x + t[:, None] * direction
        return x

    def negative_cycle(self) -> Optional[List[Tuple[int, int]]]:
        """The bounds ``(i, j)`` of a cycle that sums below zero (so the set is empty), or None.

        Bellman-Ford over the graph with an edge j -> i of length ``bounds[i, j]`` (``x_i <= x_j + bounds[i, j]``):
        a distance still shrinking after K rounds lies on, or behind, a negative cycle.
        """
        bounds = self.bounds.double().cpu().numpy()
        num_objects = len(bounds)
        finite = [
            (i, j) for i in range(num_objects) for j in range(num_objects) if i != j and np.isfinite(bounds[i, j])
        ]
        distance, previous = np.zeros(num_objects), np.full(num_objects, -1)
        for _ in range(num_objects + 1):
            last = None
            for i, j in finite:
                if distance[j] + bounds[i, j] < distance[i] - EMPTY_EPSILON:
                    distance[i], previous[i], last = distance[j] + bounds[i, j], j, i
            if last is None:
                return None
        for _ in range(num_objects):  # from behind the cycle onto it
            last = previous[last]
        cycle, node = [], last
        while True:
            cycle.append((int(node), int(previous[node])))
            node = previous[node]
            if node == last:
                return cycle[::-1]

    def scale_interval(self, i: int, j: int) -> Tuple[float, float]:
        """Smallest and largest ratio ``s_i / s_j`` over the set (tight)."""
        bounds = self.closed().bounds
        return math.exp(-float(bounds[j, i])), math.exp(float(bounds[i, j]))

