"""Print how a trained OSN run did: ns-eval metrics and the sampled configurations against the truth.

``python -m osn_nerfstudio.scripts.summarise_run RUN_DIR`` reads RUN_DIR/eval.json (from ns-eval) and
RUN_DIR/configurations.json (from osn-sample-configurations), and names RUN_DIR/contact-sheet.png (from
``osn-render contact-sheet``) last when it is there: the picture to look at.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

CONSOLE = Console()


METRICS = ("psnr", "ssim", "lpips", "depth_abs_rel", "depth_rmse", "miou", "pq")
"""ns-eval metrics shown, one row each (eval.json has every key, standard deviations and timings too)."""

CONTACT_SHEET = "contact-sheet.png"
"""The demo's ``osn-render contact-sheet`` picture, in the run directory."""

CONFIGURATIONS = (("render", ""), ("truth", "gt/"), ("best of N", "best_of_n/"), ("mean of N", "mean_of_n/"))
"""Columns: the configurations ns-eval scores, with the prefix of their keys."""


def metrics_table(results: dict, title: str) -> Table:
    """One row per metric, one column per configuration that ns-eval scored ("-" where a metric is missing)."""
    columns = [(name, prefix) for name, prefix in CONFIGURATIONS if any(f"{prefix}{m}" in results for m in METRICS)]
    table = Table(title=title)
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for metric in METRICS:
        values = [results.get(f"{prefix}{metric}") for _, prefix in columns]
        if any(isinstance(v, (int, float)) for v in values):
            table.add_row(metric, *(f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in values))
    return table


def summarise(run: Path) -> None:
    evaluation = json.loads((run / "eval.json").read_text())
    CONSOLE.print(metrics_table(evaluation["results"], f"Novel-view test cameras (all metrics: {run / 'eval.json'})"))

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
    sheet = run / CONTACT_SHEET
    if sheet.is_file():
        CONSOLE.print(f"Contact sheet (test views at the truth and at sampled configurations): {sheet}", soft_wrap=True)


if __name__ == "__main__":
    summarise(Path(sys.argv[1]))
