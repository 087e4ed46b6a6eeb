"""The object scale network (OSN): which configurations of object scales reproduce the video (docs/method.md).

Pure torch. A configuration is ``s = (1, s_1, ..., s_{K-1})``; the network sees it as the normalised log-scale
``u_k = (log s_k - log lo_k) / (log hi_k - log lo_k)`` in [0, 1]^(K-1) and outputs the logit of the probability
that the configuration is valid. It is trained with class-balanced BCE on validity labels
(:mod:`osn_nerfstudio.core.validity`) and sampled by rejection: candidates drawn from the labelled valid set (moved
out by a margin) and scored above 0.5. Valid sets of real scenes are thin (under 0.1 % of the scale ranges), so the
network reads its input in the valid set's own frame: centred on it and whitened by its spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from osn_nerfstudio.core.scale_ranges import ScaleRanges
from osn_nerfstudio.core.valid_set import ValidSet, unbounded


@dataclass
class ScaleNetworkConfig:
    """Object scale network: architecture, training per alternation round, and sampling."""

    hidden_dim: int = 64
    """Width of the hidden layers."""
    num_layers: int = 3
    """Number of hidden layers (ReLU)."""
    lr: float = 5e-3
    """Adam learning rate."""
    train_steps: int = 500
    """Optimisation steps per alternation round."""
    batch_size: int = 1024
    """Labelled configurations per optimisation step (drawn with replacement)."""
    candidates_per_sample: int = 32
    """Candidates drawn per requested configuration in each round of sampling (uniform in the proposal set)."""
    max_candidates: int = 1 << 17
    """Candidates drawn at most per sampling call before the best-scored ones fill what is missing."""
    proposal_margin: float = 0.25
    """Sampling proposes configurations from the labelled valid set with every bound moved out by this fraction of
    the set's width along it, so that the network, not the labels, decides at the set's faces."""
    min_input_spread: float = 0.002
    """Smallest spread (normalised log-scale) the network's input frame gives any direction of the valid set."""


@dataclass
class SampleResult:
    """Configurations drawn from the network's valid region."""

    scales: Float[Tensor, "n K"]
    u: Float[Tensor, "n Km1"]
    probability: Float[Tensor, " n"]
    fell_back: bool
    """True when fewer than n candidates scored above 0.5 and the best-scored ones filled the rest."""
    message: str
    """Why and how sampling fell back; empty otherwise."""


class ObjectScaleNetwork(nn.Module):
    """MLP from a normalised configuration to the logit of its validity; keeps its own Adam optimiser.

    The optimiser's state is part of this module's ``state_dict`` (``get_extra_state``), so checkpoints resume
    training where it stopped. With a single object (the background) there is nothing to learn: the only
    configuration, ``[1]``, is the observed scene and is valid with probability 1.
    """

    def __init__(self, scale_range: Float[Tensor, "K 2"], config: Optional[ScaleNetworkConfig] = None) -> None:
        super().__init__()
        self.config = config or ScaleNetworkConfig()
        ScaleRanges(scale_range)  # validate before storing
        self.register_buffer("scale_range", scale_range.detach().float().clone())
        num_inputs = scale_range.shape[0] - 1
        # where sampling draws its candidates (log-scale bounds, ValidSet): the scale ranges until a refit says more
        self.register_buffer(
            "proposal_bounds", ValidSet.from_constraints(unbounded(len(scale_range)), scale_range).closed().bounds
        )
        # the network reads (u - input_offset) @ input_transform.T: the unit cube centred at first, the valid set later
        self.register_buffer("input_offset", torch.full((num_inputs,), 0.5))
        self.register_buffer("input_transform", 2.0 * torch.eye(num_inputs))
        self.mlp = self._build_mlp(num_inputs) if num_inputs > 0 else None
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr) if self.mlp is not None else None

    def _build_mlp(self, num_inputs: int) -> nn.Sequential:
        layers, width = [], num_inputs
        for _ in range(self.config.num_layers):
            layers += [nn.Linear(width, self.config.hidden_dim), nn.ReLU()]
            width = self.config.hidden_dim
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)

    @property
    def ranges(self) -> ScaleRanges:
        return ScaleRanges(self.scale_range)

    @property
    def num_objects(self) -> int:
        return self.scale_range.shape[0]

    def forward(self, u: Float[Tensor, "*bs Km1"]) -> Float[Tensor, "*bs"]:
        """Validity logits of normalised configurations."""
        if self.mlp is None:
            return torch.full(u.shape[:-1], math.inf, dtype=u.dtype, device=u.device)
        frame = (u.to(self.scale_range.dtype) - self.input_offset) @ self.input_transform.T
        return self.mlp(frame)[..., 0]

    def probability(self, scales: Float[Tensor, "*bs K"]) -> Float[Tensor, "*bs"]:
        """Probability that each configuration of scales is valid."""
        return torch.sigmoid(self(self.ranges.normalise(scales)))

    def draw_uniform(self, n: int, generator: Optional[torch.Generator] = None) -> Float[Tensor, "n Km1"]:
        """``n`` normalised configurations uniform over the scale ranges (log-uniform scales)."""
        device = generator.device if generator is not None else self.scale_range.device
        return torch.rand(n, self.num_objects - 1, generator=generator, device=device).to(self.scale_range.device)

    def draw_proposals(self, n: int, generator: Optional[torch.Generator] = None) -> Float[Tensor, "n Km1"]:
        """``n`` normalised configurations uniform over the proposal set (:meth:`set_proposal`)."""
        if generator is None or generator.device.type != "cpu":
            generator = torch.Generator().manual_seed(int(torch.randint(1 << 62, (1,), generator=generator)))
        scales = ValidSet(self.proposal_bounds.double().cpu()).sample(n, generator, proposals=max(4 * n, 4096))
        return self.ranges.normalise(scales.to(self.scale_range))

    def set_proposal(self, valid: ValidSet) -> None:
        """Draw sampling candidates from ``valid`` (the labelled valid set) with every bound ``b_ij`` moved out by
        ``proposal_margin`` times the set's width ``b_ij + b_ji`` along it, inside the scale ranges; from the scale
        ranges when it is empty."""
        if valid.is_empty():
            bounds = unbounded(self.num_objects)
        else:
            closed = ValidSet.from_constraints(valid.bounds, self.scale_range).closed().bounds
            bounds = closed + self.config.proposal_margin * (closed + closed.T)
        self.proposal_bounds.copy_(ValidSet.from_constraints(bounds, self.scale_range).closed().bounds)

    def set_input_frame(self, members: Float[Tensor, "n Km1"]) -> None:
        """Read inputs in the frame of ``members`` (normalised configurations labelled valid): centred on their
        mean, and whitened so that their spread is 0.5 along every principal direction (at least
        ``min_input_spread``). Without members the unit cube's frame is restored."""
        if len(members) < 2:
            self.input_offset.fill_(0.5)
            self.input_transform.copy_(2.0 * torch.eye(self.num_objects - 1))
            return
        members = members.double()
        covariance = torch.cov(members.T).reshape(members.shape[1], members.shape[1])
        variance, axes = torch.linalg.eigh(covariance)
        spread = variance.clamp_min(0.0).sqrt().clamp_min(self.config.min_input_spread)
        self.input_offset.copy_(members.mean(0))
        self.input_transform.copy_((axes / (2.0 * spread)).T)

    def fit(
        self,
        u: Float[Tensor, "C Km1"],
        labels: Bool[Tensor, " C"],
        steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, float]:
        """Train on labelled configurations with class-balanced BCE; returns statistics on those configurations.

        ``pos_weight = #invalid / #valid`` weighs both classes equally, since the valid region may be small.
        Mini-batches of ``config.batch_size`` are drawn with replacement; ``steps`` defaults to
        ``config.train_steps``. Runs with gradients even when called under ``torch.no_grad`` or
        ``torch.inference_mode``.
        """
        steps = self.config.train_steps if steps is None else steps
        num_valid = int(labels.sum())
        pos_weight = (len(labels) - num_valid) / num_valid if num_valid else 1.0
        if self.mlp is not None and len(labels):
            self._optimise(u, labels.float(), steps, pos_weight, generator)
        stats = self._evaluate(u, labels, pos_weight)
        stats.update(steps=float(steps), valid_fraction=num_valid / max(len(labels), 1), pos_weight=pos_weight)
        return stats

    def _optimise(
        self, u: Tensor, targets: Tensor, steps: int, pos_weight: float, generator: Optional[torch.Generator]
    ) -> None:
        assert self.optimizer is not None
        device = generator.device if generator is not None else u.device
        batch_size = min(self.config.batch_size, len(targets))
        with torch.inference_mode(False), torch.enable_grad():
            # clones are normal tensors even if the caller made its tensors under inference_mode
            u, targets = u.clone(), targets.clone()
            pos_weight_tensor = torch.tensor(pos_weight, device=u.device)
            for _ in range(steps):
                rows = torch.randint(len(targets), (batch_size,), generator=generator, device=device).to(u.device)
                loss = F.binary_cross_entropy_with_logits(self(u[rows]), targets[rows], pos_weight=pos_weight_tensor)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()

    @torch.no_grad()
    def _evaluate(self, u: Tensor, labels: Tensor, pos_weight: float) -> Dict[str, float]:
        """Balanced BCE, accuracy and balanced accuracy (mean of the per-class accuracies)."""
        if len(labels) == 0:
            return {"loss": 0.0, "accuracy": 1.0, "balanced_accuracy": 1.0}
        logits = self(u)
        predicted = logits > 0
        if self.mlp is None:
            loss = 0.0
        else:
            weight = torch.tensor(pos_weight, device=u.device)
            loss = float(F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight))
        correct = predicted == labels
        per_class = [correct[labels == value].float().mean() for value in (True, False) if (labels == value).any()]
        return {
            "loss": loss,
            "accuracy": float(correct.float().mean()),
            "balanced_accuracy": float(torch.stack(per_class).mean()),
        }

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        candidates_per_sample: Optional[int] = None,
    ) -> SampleResult:
        """``n`` configurations drawn uniformly from the region the network scores above 0.5.

        Draws ``n * candidates_per_sample`` candidates from the proposal set (:meth:`set_proposal`), then twice as
        many each round, until ``n`` pass or ``config.max_candidates`` are spent. If fewer pass (an untrained
        network, or a valid region too small to find), the best-scored candidates fill the rest and the result says
        so; sampling never fails.
        """
        per_round = n * (candidates_per_sample or self.config.candidates_per_sample)
        budget = max(self.config.max_candidates, per_round)
        kept_u, kept_logits, best_u, best_logits, drawn = [], [], None, None, 0
        while drawn < budget and sum(len(u) for u in kept_u) < n:
            u = self.draw_proposals(per_round, generator)
            logits = self(u)
            drawn += per_round
            per_round *= 2
            passing = logits > 0
            kept_u.append(u[passing])
            kept_logits.append(logits[passing])
            top = logits.argsort(descending=True)[:n]
            best_u = u[top] if best_u is None else torch.cat([best_u, u[top]])
            best_logits = logits[top] if best_logits is None else torch.cat([best_logits, logits[top]])
        u, logits = torch.cat(kept_u)[:n], torch.cat(kept_logits)[:n]
        fell_back = len(u) < n
        message = ""
        if fell_back:
            fill = best_logits.argsort(descending=True)[: n - len(u)]
            message = (
                f"only {len(u)} of {drawn} candidate configurations scored above 0.5 for {n} requested; the "
                f"{n - len(u)} best-scored others filled the rest. The scale network may be untrained, or its valid "
                "region too small to find: raise max_candidates."
            )
            u, logits = torch.cat([u, best_u[fill]]), torch.cat([logits, best_logits[fill]])
        return SampleResult(
            scales=self.ranges.denormalise(u),
            u=u,
            probability=torch.sigmoid(logits),
            fell_back=fell_back,
            message=message,
        )

    def get_extra_state(self) -> Dict[str, Any]:
        """The optimiser's state, saved with the module's parameters."""
        return {"optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
