"""Print how a trained OSN run did: ns-eval metrics and the sampled configurations against the truth.

``python -m osn_nerfstudio.scripts.summarise_run RUN_DIR`` reads RUN_DIR/eval.json (from ns-eval) and
RUN_DIR/configurations.json (from osn-sample-configurations).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

CONSOLE = Console()


def summarise(run: Path) -> None:
    evaluation = json.loads((run / "eval.json").read_text())
    metrics = Table(title=f"Novel-view test cameras ({run})")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for name, value in evaluation["results"].items():
        metrics.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    CONSOLE.print(metrics)

    report = json.loads((run / "configurations.json").read_text())
    configurations = report["configurations"]
    valid = sum(c["osn_score"] > 0.5 for c in configurations)
    scales = Table(title=f"{len(configurations)} sampled configurations ({valid} scored valid by the scale network)")
    scales.add_column("object")
    scales.add_column("range", justify="right")
    scales.add_column("sampled min..max", justify="right")
    truth = report.get("ground_truth")
    if truth:
        scales.add_column("true", justify="right")
    for name in report["objects"][1:]:
        values = [c["scales"][name] for c in configurations]
        lo, hi = report["scale_range"][name]
        row = [name, f"{lo:.3g}..{hi:.3g}", f"{min(values):.3g}..{max(values):.3g}"]
        if truth:
            row.append(f"{truth['scales'][name]:.3g}")
        scales.add_row(*row)
    CONSOLE.print(scales)
    if truth:
        CONSOLE.print(
            f"True configuration: scale network score {truth['osn_score']:.3f}, exact validity "
            f"{truth['exact_validity']:.3f}; closest sample #{truth['closest_index']} "
            f"(largest log-scale gap {truth['closest_max_log_ratio']:.3f})."
        )
    CONSOLE.print(f"Renders of the test cameras: {run / 'renders'}")


if __name__ == "__main__":
    summarise(Path(sys.argv[1]))
