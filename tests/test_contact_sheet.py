"""The contact sheet (osn-render contact-sheet) and the captions of rendered tiles."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import command
from osn_nerfstudio.scripts.render import (
    CAPTION_PADDING,
    SHEET_GAP,
    SHEET_PANEL_GAP,
    SHEET_PANEL_NAMES,
    SHEET_ROW_GAP,
    caption_strip,
    contact_sheet,
    line_height,
    spread_configurations,
    spread_indices,
    text_width,
    with_caption,
)

HEIGHT, WIDTH = 12, 16


def panel(view: int, column: int, kind: int) -> np.ndarray:
    """A uniform panel whose colour names its place (never white, never the caption's black)."""
    return np.full((HEIGHT, WIDTH, 3), (20 + 40 * view, 20 + 30 * column, 60 + 60 * kind), np.uint8)


def sheet_of(views: int, columns: int, captions=None) -> np.ndarray:
    rows = [[[panel(v, c, k) for k in range(3)] for c in range(columns)] for v in range(views)]
    captions = captions or [[f"config {c}", "box=1.5"] for c in range(columns)]
    return contact_sheet(rows, captions, [f"view {v}" for v in range(views)])


def find(sheet: np.ndarray, image: np.ndarray) -> list:
    """Top-left corners where ``image`` (uniform) covers a whole block of ``sheet``."""
    colour = image[0, 0]
    match = (sheet == colour).all(-1)
    corners = np.argwhere(match)
    starts = [(y, x) for y, x in corners if (y == 0 or not match[y - 1, x]) and (x == 0 or not match[y, x - 1])]
    return [(int(y), int(x)) for y, x in starts if match[y : y + HEIGHT, x : x + WIDTH].all()]


def test_layout_views_as_rows_configurations_as_columns():
    views, columns = 2, 3
    sheet = sheet_of(views, columns)
    labels = [*(f"view {v}" for v in range(views)), *SHEET_PANEL_NAMES]
    label_width = max(text_width(t) for t in labels) + 2 * CAPTION_PADDING
    assert sheet.shape[1] == label_width + columns * (WIDTH + SHEET_GAP)
    header = sheet.shape[0] - SHEET_GAP - views * (3 * HEIGHT + 2 * SHEET_PANEL_GAP) - (views - 1) * SHEET_ROW_GAP
    assert header == 2 * line_height() + 2 * CAPTION_PADDING  # two caption lines (no separator to wrap at)
    corners = {}
    for v in range(views):
        for c in range(columns):
            for k in range(3):
                found = find(sheet, panel(v, c, k))
                assert len(found) == 1, (v, c, k, found)
                corners[v, c, k] = found[0]
    for (v, c, k), (y, x) in corners.items():
        assert x == label_width + SHEET_GAP + c * (WIDTH + SHEET_GAP)
        row_top = header + SHEET_GAP + v * (3 * HEIGHT + 2 * SHEET_PANEL_GAP + SHEET_ROW_GAP)
        assert y == row_top + k * (HEIGHT + SHEET_PANEL_GAP)
    # one more view adds one row of panels, one more configuration one column
    assert sheet_of(views + 1, columns).shape[0] == sheet.shape[0] + 3 * HEIGHT + 2 * SHEET_PANEL_GAP + SHEET_ROW_GAP
    assert sheet_of(views, columns + 1).shape[1] == sheet.shape[1] + WIDTH + SHEET_GAP


def test_captions_are_drawn():
    sheet = sheet_of(1, 2)
    header = sheet[: 2 * line_height() + 2 * CAPTION_PADDING, -2 * (WIDTH + SHEET_GAP) :]
    assert (header < 128).any(), "the column captions are written in the header"
    labels = sheet[-3 * HEIGHT :, :10]
    assert (labels < 128).any(), "the rows are labelled"
    blank = sheet_of(1, 2, captions=[[""], [""]])
    assert blank.shape[0] < sheet.shape[0]

    tile = np.full((96, 128, 3), 180, np.uint8)
    captioned = with_caption(tile, ["#3  score 0.93", "box=1.52  sphere=0.857  cylinder=3.18"])
    assert captioned.shape == tile.shape and captioned.dtype == np.uint8
    changed = (captioned != tile).any(-1)
    assert changed[-20:].any() and not changed[:40].any(), "a band along the bottom, the top of the tile untouched"
    assert (captioned[-30:] > 200).any(), "white text on the darkened band"
    strip = caption_strip(["truth  score 0.99", "box=1.5"], 128)
    assert strip.shape == (2 * line_height() + 2 * CAPTION_PADDING, 128, 3) and (strip < 128).any()


def test_long_captions_wrap_to_the_tile():
    narrow = caption_strip(["box=1.52  sphere=0.857  cylinder=3.18"], 60)
    wide = caption_strip(["box=1.52  sphere=0.857  cylinder=3.18"], 400)
    assert narrow.shape[0] > wide.shape[0] == line_height() + 2 * CAPTION_PADDING


def report(*entries) -> dict:
    return {"objects": ["background", "box"], "configurations": [
        {"index": i, "scales": {"background": 1.0, "box": scale}, "osn_score": score, "valid": valid}
        for i, (scale, score, valid) in enumerate(entries)
    ]}


def test_spread_configurations_span_the_family():
    picked = spread_configurations(report((1.0, 0.6, True), (1.1, 0.9, True), (4.0, 0.8, True), (0.25, 0.7, True),
                                          (100.0, 0.1, False)), 3)
    assert picked == [1, 3, 2]  # the best scored, then the farthest in log-scale each time; invalid ones last
    assert spread_configurations(report((1.0, 0.6, True), (100.0, 0.1, False)), 3) == [0, 1]
    assert spread_indices(8, 4) == [0, 2, 5, 7] and spread_indices(2, 4) == [0, 1] and spread_indices(0, 4) == []


@pytest.fixture(scope="module")
def pipeline(tiny_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_run / "config.yml", test_mode="inference")
    return pipeline


def test_contact_sheet_of_a_run(pipeline, tiny_run: Path, tmp_path: Path):
    names = pipeline.model.object_names
    configurations = tmp_path / "configurations.json"
    entries = [(0.8, 0.9, True), (1.2, 0.8, True), (1.0, 0.3, False)]
    configurations.write_text(json.dumps({"objects": names, "configurations": [
        {"index": i, "scales": {names[0]: 1.0, **{name: scale * float(pipeline.model.true_scales[k])
                                                  for k, name in enumerate(names) if k}},
         "osn_score": score, "exact_validity": 0.5, "valid": valid}
        for i, (scale, score, valid) in enumerate(entries)
    ], "ground_truth": {"exact_validity": 1.0}}))
    out = tmp_path / "sheet.png"
    result = subprocess.run([command("osn-render"), "contact-sheet", "--load-config", str(tiny_run / "config.yml"),
                             "--configurations-file", str(configurations), "--output-path", str(out),
                             "--num", "2", "--views", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.strip().splitlines()[-1].endswith(str(out)), "the path is printed last"
    sheet = np.asarray(Image.open(out).convert("RGB"))

    dataset = pipeline.datamanager.eval_dataset
    views = spread_indices(len(dataset), 2)
    height, width = dataset.cameras.height[0].item(), dataset.cameras.width[0].item()
    columns = 1 + 1 + 2  # the test image, the truth, two sampled configurations
    labels = [*(f"view {v}" for v in views), *SHEET_PANEL_NAMES]
    label_width = max(text_width(t) for t in labels) + 2 * CAPTION_PADDING
    assert sheet.shape[1] == label_width + columns * (width + SHEET_GAP)
    header = sheet.shape[0] - SHEET_GAP - 2 * (3 * height + 2 * SHEET_PANEL_GAP) - SHEET_ROW_GAP
    assert header > 0 and (header - 2 * CAPTION_PADDING) % line_height() == 0
    # the first column of the second row is that test view's image, as the data has it
    image = (dataset[views[1]]["image"][..., :3].numpy() * 255).round().astype(np.uint8)
    top = header + SHEET_GAP + 3 * height + 2 * SHEET_PANEL_GAP + SHEET_ROW_GAP
    left = label_width + SHEET_GAP
    assert np.array_equal(sheet[top : top + height, left : left + width], image)
    # captions name the columns: the header above every column has text
    for c in range(columns):
        x = label_width + SHEET_GAP + c * (width + SHEET_GAP)
        assert (sheet[:header, x : x + width] < 128).any(), c
    # the columns after the test image: the truth, then the best scored valid configuration and the farthest from it
    record = json.loads(out.with_suffix(".json").read_text())
    assert [c["label"] for c in record["columns"]] == ["truth", "#0", "#1"]
    assert record["columns"][0]["exact_validity"] == 1.0 and record["columns"][1]["osn_score"] == 0.9
    assert len(record["views"]) == 2
