"""``osn-sample-configurations``: write N valid configurations of a trained OSN run to a JSON file.

Each configuration lists its scales per object, its normalised log-scales, the scale network's score, its exact
validity (the fraction of freshly cached supervision rays it explains) and the verdict of the rule the training
labels with on that cache (``valid``, with the log-scale ``margin`` to the nearest bound of the valid set). When the
scene knows the true scales, the file also scores the ground-truth configuration and names the sampled configuration
closest to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch
import tyro
from rich.console import Console

from osn_nerfstudio.console import third_party_imports

CONSOLE = Console(stderr=True)


@dataclass
class SampleConfigurations:
    """Sample valid configurations from a trained ``osn`` run."""

    load_config: Path
    """The run's config.yml (outputs/<experiment>/osn/<timestamp>/config.yml)."""
    output: Path = Path("configurations.json")
    """JSON file to write; an existing file is kept unless --overwrite is given."""
    num: int = 100
    """Number of configurations to sample."""
    seed: int = 0
    """Seed of the sampling and of the supervision pixels."""
    overwrite: bool = False
    """Replace ``output`` if it exists."""

    def main(self) -> None:
        if self.output.exists() and not self.overwrite:
            raise SystemExit(
                f"{self.output}: already exists; pass --overwrite to replace it or choose another --output."
            )
        with third_party_imports():  # nerfstudio's import-time deprecation warnings, narrowly (console.py)
            from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, checkpoint, step = eval_setup(self.load_config, test_mode="inference")
        report = sample_report(pipeline, self.num, self.seed)
        report["run"] = {"config": str(self.load_config), "checkpoint": str(checkpoint), "step": step}
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(report, indent=2) + "\n")
        CONSOLE.print(f"Wrote {len(report['configurations'])} configurations to {self.output}")
        if report["fell_back"]:
            CONSOLE.print(f"[yellow]{report['message']}")


@torch.no_grad()
def sample_report(pipeline, num: int, seed: int) -> Dict[str, Any]:
    """Configurations sampled from the run's scale network, scored by it and by exact validity."""
    from osn_nerfstudio.core.scale_ranges import closest_configuration
    from osn_nerfstudio.core.validity import validity
    from osn_nerfstudio.validity_labels import label_validity

    model = pipeline.model
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    labels = label_validity(model, pipeline.datamanager, generator, progress=True)
    cache, valid = labels.cache, labels.valid
    result = model.scale_network.sample(num, generator=generator)
    scales = result.scales.cpu()
    min_accumulation = model.config.validity.min_accumulation
    exact = validity(cache, scales, min_accumulation)
    margins = valid.margins(scales)
    names = model.object_names
    report: Dict[str, Any] = {
        "objects": names,
        "scale_range": {name: model.scale_range[k].tolist() for k, name in enumerate(names)},
        "supervision_rays": cache.num_rays,
        "fell_back": result.fell_back,
        "message": result.message,
        "configurations": [
            {
                "index": i,
                "scales": {name: float(scales[i, k]) for k, name in enumerate(names)},
                "normalised": result.u[i].tolist(),
                "osn_score": float(result.probability[i]),
                "exact_validity": float(exact[i]),
                "valid": bool(margins[i] >= 0),
                "margin": float(margins[i]),
            }
            for i in range(len(scales))
        ],
    }
    true = model.true_scales.cpu()
    if not torch.isnan(true).any():
        closest, gap = closest_configuration(scales, true)
        report["ground_truth"] = {
            "scales": {name: float(true[k]) for k, name in enumerate(names)},
            "osn_score": float(model.scale_network.probability(true.to(model.true_scales.device)[None])[0]),
            "exact_validity": float(validity(cache, true[None], min_accumulation)[0]),
            "valid": bool(valid.contains(true[None])[0]),
            "margin": float(valid.margins(true[None])[0]),
            "closest_index": closest,
            "closest_max_log_ratio": gap,
        }
    return report


def entrypoint() -> None:
    tyro.cli(SampleConfigurations).main()


if __name__ == "__main__":
    entrypoint()
