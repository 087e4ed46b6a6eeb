"""ns-eval on the tiny run: every metric at every configuration; co-visibility masking; reproducibility."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import command

METRICS = ("psnr", "ssim", "depth_abs_rel", "depth_rmse", "depth_mad_mae", "depth_mad_mse", "miou", "pq")
GROUPS = ("", "gt/", "best_of_n/", "mean_of_n/")


def test_ns_eval_reports_every_metric_at_every_configuration(tiny_run: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    renders = tmp_path / "renders"
    result = subprocess.run(
        [
            command("ns-eval"),
            "--load-config",
            str(tiny_run / "config.yml"),
            "--output-path",
            str(output),
            "--render-output-path",
            str(renders),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(output.read_text())["results"]
    for group in GROUPS:
        for metric in METRICS:
            key = f"{group}{metric}"
            assert key in results and math.isfinite(results[key]), key
            assert math.isfinite(results[f"{key}_std"]), key
        assert f"{group}lpips" in results or "lpips_note" in results, group
    if "lpips" not in results:
        assert "LPIPS skipped" in results["lpips_note"] and "LPIPS skipped" in result.stdout
    num_sampled = 4  # eval_num_configurations's default
    for name in ["render", "gt"] + [f"sample_{i}" for i in range(num_sampled)]:
        assert results[f"scales/{name}/background"] == 1.0
    assert results["best_of_n/index"] in range(num_sampled)
    assert results["best_of_n/psnr"] >= results["mean_of_n/psnr"]  # best by PSNR
    assert 0.0 <= results["pq"] <= 1.0 and 0.0 <= results["miou"] <= 1.0
    assert (renders / "eval_img_0000.png").is_file() and (renders / "gt_scales_depth_0000.png").is_file()


@pytest.fixture(scope="module")
def pipeline(tiny_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_run / "config.yml")
    pipeline.model.config.eval_num_configurations = 1
    return pipeline


def quality(results: dict) -> dict:
    return {k: v for k, v in results.items() if not k.startswith(("num_rays_per_sec", "fps"))}


def test_evaluation_is_reproducible_and_restores_the_render_scales(pipeline):
    render_scales = pipeline.model.render_scales.clone()
    first = pipeline.get_average_eval_image_metrics()
    assert torch.equal(pipeline.model.render_scales, render_scales)
    second = pipeline.get_average_eval_image_metrics()
    assert quality(first) == quality(second)
    names = pipeline.model.object_names
    assert [first[f"scales/render/{name}"] for name in names] == pytest.approx(render_scales.tolist())
    assert [first[f"scales/gt/{name}"] for name in names] == pytest.approx(pipeline.model.true_scales.tolist())


def write_masks(pipeline, directory: Path, keep_left_columns: int) -> None:
    directory.mkdir()
    for path in pipeline.datamanager.eval_dataset.image_filenames:
        width, height = Image.open(path).size
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[:, :keep_left_columns] = 255
        Image.fromarray(mask).save(directory / f"{Path(path).stem}.png")


def test_covisibility_masks_restrict_the_scored_pixels(pipeline, tmp_path: Path):
    config = pipeline.model.config
    unmasked = quality(pipeline.get_average_eval_image_metrics())
    width = int(pipeline.datamanager.eval_dataset.cameras.width[0])
    write_masks(pipeline, tmp_path / "all", keep_left_columns=width)
    write_masks(pipeline, tmp_path / "left", keep_left_columns=width // 3)
    try:
        config.eval_covisibility_masks = str(tmp_path / "all")
        assert quality(pipeline.get_average_eval_image_metrics()) == pytest.approx(unmasked)
        config.eval_covisibility_masks = str(tmp_path / "left")
        left = pipeline.get_average_eval_image_metrics()
        assert left["psnr"] != pytest.approx(unmasked["psnr"])
        assert left["gt/miou"] != pytest.approx(unmasked["gt/miou"])
        config.eval_covisibility_masks = str(tmp_path / "missing")
        with pytest.raises(FileNotFoundError, match="co-visibility mask"):
            pipeline.get_average_eval_image_metrics()
    finally:
        config.eval_covisibility_masks = None


def test_groups_follow_what_the_scene_and_settings_provide(pipeline):
    model = pipeline.model
    truth = model.true_scales.clone()
    try:
        model.true_scales.fill_(float("nan"))  # a real video: no true scales
        model.config.eval_num_configurations = 0
        results = pipeline.get_average_eval_image_metrics()
    finally:
        model.true_scales.copy_(truth)
        model.config.eval_num_configurations = 1
    assert math.isfinite(results["psnr"]) and math.isfinite(results["pq"])
    assert not any(k.startswith(("gt/", "best_of_n/", "mean_of_n/", "scales/gt/", "scales/sample_")) for k in results)


def test_run_summary_shows_one_row_per_metric_and_one_column_per_configuration():
    from rich.console import Console

    from osn_nerfstudio.scripts.summarise_run import metrics_table

    results = {"psnr": 25.5, "psnr_std": 1.0, "gt/psnr": 30.25, "miou": 0.93, "gt/miou": 0.98, "best_of_n/psnr": 21.0,
               "best_of_n/index": 2.0, "num_rays_per_sec": 1e5, "lpips_note": "LPIPS skipped"}
    console = Console(width=200, record=True)
    console.print(metrics_table(results, "t"))
    lines = [line.replace("┃", "│").split("│")[1:-1] for line in console.export_text().splitlines()]
    lines = [row for row in lines if len(row) > 2]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in lines}
    assert cells["metric"] == ["render", "truth", "best of N"]
    assert cells["psnr"] == ["25.5000", "30.2500", "21.0000"]
    assert cells["miou"] == ["0.9300", "0.9800", "-"]
    assert set(cells) == {"metric", "psnr", "miou"}
