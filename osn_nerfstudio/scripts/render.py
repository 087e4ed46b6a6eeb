"""osn-render: nerfstudio's ns-render on osn runs, at a chosen configuration of object scales.

    osn-render camera-path --load-config RUN/config.yml --camera-path-filename path.json --index 3 \
        --configurations-file RUN/configurations.json
    osn-render interpolate --load-config RUN/config.yml --ground-truth
    osn-render spiral      --load-config RUN/config.yml --scales box=2.0 sphere=0.8
    osn-render dataset     --load-config RUN/config.yml --split test
    osn-render configurations --load-config RUN/config.yml --num 4 [--camera-path-filename path.json]
    osn-render contact-sheet  --load-config RUN/config.yml --configurations-file RUN/configurations.json

The first four are ns-render's own subcommands with every ns-render option; the configuration options pick
the scales the run is rendered at (without any, the run's own render configuration is used, which is also
what plain ``ns-render`` renders). ``configurations`` renders one view or one camera path under N sampled
valid configurations side by side, so the whole family of scenes the video admits shows at a glance; each tile
carries a caption (its scales and scores). ``contact-sheet`` is one picture of a trained run: the test views as
rows, the test image, the true configuration and N sampled ones as columns, each as RGB, depth and segmentation.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import tyro
from PIL import Image, ImageDraw, ImageFont
from typing_extensions import Annotated

from osn_nerfstudio.console import progress_bar, third_party_imports

with third_party_imports():  # nerfstudio's import-time deprecation warnings, narrowly (osn_nerfstudio/console.py)
    from nerfstudio.scripts import render as ns_render
    from nerfstudio.utils import colormaps
    from nerfstudio.utils.rich_utils import CONSOLE


class ConfigurationError(ValueError):
    """A requested configuration that cannot be used; the message says what to change."""


@dataclass
class ConfigurationChoice:
    """Which configuration of object scales to render at (at most one of these)."""

    scales: Tuple[str, ...] = ()
    """Explicit scales as NAME=VALUE, e.g. ``--scales box=2.0 sphere=0.8``; objects not named keep the run's
    render configuration."""
    configurations_file: Optional[Path] = None
    """A JSON file written by osn-sample-configurations; with ``--index`` picks one of its configurations."""
    index: int = 0
    """Configuration index within ``--configurations-file``."""
    ground_truth: bool = False
    """Render at the scene's true scales (synthetic scenes only)."""

    def describe(self) -> str:
        if self.ground_truth:
            return "the ground-truth configuration"
        if self.configurations_file is not None:
            return f"configuration {self.index} of {self.configurations_file}"
        if self.scales:
            return f"scales {self.scales}"
        return "the run's render configuration"


def resolve_configuration(model, choice: ConfigurationChoice) -> torch.Tensor:
    """[K] scales (background first) that ``choice`` asks for, checked against the model's objects and ranges."""
    names: List[str] = list(model.object_names)
    picked = [choice.ground_truth, choice.configurations_file is not None, bool(choice.scales)]
    if sum(picked) > 1:
        raise ConfigurationError("Choose one of --ground-truth, --configurations-file or --scales.")
    scales = model.render_scales.detach().cpu().clone()
    if choice.ground_truth:
        if torch.isnan(model.true_scales).any():
            raise ConfigurationError(
                "This scene has no ground-truth scales (its scene.json has no evaluation.relative_scales)."
            )
        return model.true_scales.detach().cpu().clone()
    named = parse_scales(choice.scales)
    if choice.configurations_file is not None:
        named = configuration_from_file(choice.configurations_file, choice.index)
    for name, value in named.items():
        if name not in names:
            raise ConfigurationError(f"Unknown object {name!r}; this run's objects are {names}.")
        if not (value > 0 and math.isfinite(value)):
            raise ConfigurationError(f"The scale of {name!r} must be a positive number, got {value}.")
        scales[names.index(name)] = float(value)
    if abs(float(scales[0]) - 1.0) > 1e-6:
        raise ConfigurationError(
            f"The background {names[0]!r} anchors the units; its scale must be 1, got {float(scales[0])}."
        )
    warn_outside_ranges(names, scales, model.scale_range.detach().cpu())
    return scales


def parse_scales(entries: Sequence[str]) -> Dict[str, float]:
    """``["box=2", "sphere=0.5"]`` as ``{"box": 2.0, "sphere": 0.5}``."""
    named = {}
    for entry in entries:
        name, separator, value = entry.partition("=")
        try:
            named[name] = float(value) if separator else None
        except ValueError:
            named[name] = None
        if named[name] is None:
            raise ConfigurationError(f"--scales {entry!r}: write each scale as NAME=VALUE, e.g. {name or 'box'}=1.5.")
    return named


def read_configurations_file(path: Path) -> dict:
    """An osn-sample-configurations JSON file (``configurations``: a list with ``scales`` by object name each)."""
    try:
        report = json.loads(Path(path).read_text())
        if not all(isinstance(c["scales"], dict) for c in report["configurations"]):
            raise TypeError("a configuration without scales")
    except (OSError, ValueError, KeyError, TypeError) as error:
        message = f"{path}: not a configurations file written by osn-sample-configurations ({error})."
        raise ConfigurationError(message) from None
    return report


def configuration_from_file(path: Path, index: int) -> Dict[str, float]:
    """Scales by object name of configuration ``index`` in an osn-sample-configurations JSON file."""
    configurations = read_configurations_file(path)["configurations"]
    if not 0 <= index < len(configurations):
        raise ConfigurationError(
            f"{path} holds configurations 0..{len(configurations) - 1}; --index {index} is not one of them."
        )
    return {name: float(value) for name, value in configurations[index]["scales"].items()}


def warn_outside_ranges(names: List[str], scales: torch.Tensor, ranges: torch.Tensor) -> None:
    for k, name in enumerate(names[1:], start=1):
        lo, hi = ranges[k].tolist()
        if not lo <= float(scales[k]) <= hi:
            CONSOLE.print(
                f"[yellow]{name}: scale {float(scales[k]):.4g} lies outside its range [{lo:.4g}, {hi:.4g}]; "
                "rendering anyway."
            )


def apply_configuration(pipeline, choice: ConfigurationChoice) -> torch.Tensor:
    """Set the model's render configuration to ``choice``; returns the scales."""
    model = pipeline.model
    scales = resolve_configuration(model, choice)
    model.render_scales.copy_(scales.to(model.render_scales.device))
    chosen = ", ".join(f"{n}={float(s):.4g}" for n, s in zip(model.object_names, scales))
    CONSOLE.print(f"Rendering at {choice.describe()}: {chosen}")
    return scales


@contextmanager
def configured_eval_setup(choice: ConfigurationChoice) -> Iterator[None]:
    """While active, ns-render's pipeline loading also applies ``choice`` to the loaded model.

    ns-render's subcommands load the run inside their ``main``; wrapping the loader it calls is the one place
    to set the configuration without copying their rendering code.
    """
    original = ns_render.eval_setup

    def setup_and_configure(*args, **kwargs):
        loaded = original(*args, **kwargs)
        apply_configuration(loaded[1], choice)
        return loaded

    ns_render.eval_setup = setup_and_configure
    try:
        yield
    finally:
        ns_render.eval_setup = original


def _configured(base):
    """ns-render subcommand ``base`` with the configuration options added."""

    @dataclass
    class Configured(ConfigurationChoice, base):
        def main(self) -> None:
            choice = ConfigurationChoice(self.scales, self.configurations_file, self.index, self.ground_truth)
            with configured_eval_setup(choice):
                base.main(self)

    Configured.__name__ = Configured.__qualname__ = base.__name__
    Configured.__doc__ = f"{base.__doc__} At a chosen configuration of object scales."
    return Configured


RenderCameraPath = _configured(ns_render.RenderCameraPath)
RenderInterpolated = _configured(ns_render.RenderInterpolated)
SpiralRender = _configured(ns_render.SpiralRender)
DatasetRender = _configured(ns_render.DatasetRender)


@dataclass
class Shown:
    """A configuration shown in a picture, and what its caption says about it."""

    label: str
    """``#3`` (its index), ``truth``, ..."""
    scales: torch.Tensor
    """[K] scales, background first."""
    score: Optional[float] = None
    """The scale network's probability that it is valid."""
    exact: Optional[float] = None
    """Its exact validity (osn-sample-configurations: the fraction of supervision rays it explains)."""

    def caption(self, names: Sequence[str]) -> List[str]:
        """Two lines: label and scores; the objects' scales (the background's is always 1)."""
        head = [self.label]
        if self.score is not None:
            head.append(f"score {self.score:.2f}")
        if self.exact is not None:
            head.append(f"exact {self.exact:.2f}")
        scales = [f"{name}={value:.3g}" for name, value in zip(names[1:], self.scales.tolist()[1:])]
        return [CAPTION_SEPARATOR.join(head), CAPTION_SEPARATOR.join(scales)]


def shown_from_report(report: dict, index: int, scales: torch.Tensor) -> Shown:
    """Configuration ``index`` of an osn-sample-configurations report, with its scores where the file has them."""
    entry = report["configurations"][index]
    return Shown(f"#{entry.get('index', index)}", scales, entry.get("osn_score"), entry.get("exact_validity"))


@dataclass
class RenderConfigurations:
    """One view or one camera path rendered under N configurations side by side (an image or video grid), each tile
    captioned with its configuration's scales and scores."""

    load_config: Path
    """Path to the run's config.yml."""
    output_path: Path = Path("renders/configurations.png")
    """Grid image (.png/.jpg) for one view, or video (.mp4) for a camera path. A JSON file with the same stem
    records the configurations."""
    num: int = 4
    """Configurations to show: sampled from the scale network, or the first N of ``--configurations-file``."""
    seed: int = 0
    """Seed of the sampling."""
    configurations_file: Optional[Path] = None
    """Use the configurations of this osn-sample-configurations file instead of sampling."""
    camera_path_filename: Optional[Path] = None
    """A viewer camera path to render (a video); without it one training view is rendered (an image)."""
    frame: Optional[int] = None
    """Training frame whose camera is rendered when no camera path is given (default: the middle one)."""
    rendered_output_name: str = "rgb"
    """Output to show: rgb, depth, accumulation, segmentation, ..."""
    columns: Optional[int] = None
    """Grid columns (default: about square)."""
    overwrite: bool = False
    """Replace an existing output file."""

    def main(self) -> None:
        from nerfstudio.utils.eval_utils import eval_setup

        for path in (self.output_path, self.output_path.with_suffix(".json")):
            if path.exists() and not self.overwrite:
                raise SystemExit(f"{path} exists; choose another --output-path or pass --overwrite.")
        _, pipeline, _, _ = eval_setup(self.load_config, test_mode="inference")
        shown = self.configurations(pipeline)
        camera_path = None
        if self.camera_path_filename is not None:
            camera_path = json.loads(self.camera_path_filename.read_text())
        cameras = self.cameras(pipeline, camera_path)
        names = pipeline.model.object_names
        with progress_bar(CONSOLE) as progress:
            task = progress.add_task("Rendering configurations", total=len(shown) * len(cameras))
            advance = partial(progress.advance, task)
            tiles = [render_frames(pipeline, cameras, c.scales, self.rendered_output_name, advance) for c in shown]
        captions = [configuration.caption(names) for configuration in shown]
        frames = [grid([with_caption(tile[i], caption) for tile, caption in zip(tiles, captions)], self.columns)
                  for i in range(len(cameras))]
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        seconds = 1.0 if camera_path is None else float(camera_path.get("seconds", 5.0))
        write_frames(self.output_path, frames, seconds=seconds)
        rows = [configuration.scales.tolist() for configuration in shown]
        record = {"configurations": [{name: float(s) for name, s in zip(names, row)} for row in rows]}
        self.output_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        CONSOLE.print(f"Wrote {self.output_path} ({len(shown)} configurations, {len(frames)} frame(s))")

    def configurations(self, pipeline) -> List[Shown]:
        """The first ``num`` configurations of ``--configurations-file``, else ``num`` sampled by the scale network."""
        model = pipeline.model
        if self.configurations_file is not None:
            report = read_configurations_file(self.configurations_file)
            return [
                shown_from_report(report, i, resolve_configuration(
                    model, ConfigurationChoice(configurations_file=self.configurations_file, index=i)))
                for i in range(self.num)
            ]
        return sampled_configurations(model, self.num, self.seed)

    def cameras(self, pipeline, camera_path: Optional[dict]):
        """The cameras of ``camera_path`` (a nerfstudio camera path), else the training camera at ``frame``."""
        if camera_path is not None:
            from nerfstudio.cameras.camera_paths import get_path_from_json

            return get_path_from_json(camera_path)
        cameras = pipeline.datamanager.train_dataset.cameras
        frame = len(cameras) // 2 if self.frame is None else self.frame
        if not 0 <= frame < len(cameras):
            raise SystemExit(f"--frame {frame}: the video has frames 0..{len(cameras) - 1}.")
        return cameras[frame : frame + 1]


def sampled_configurations(model, num: int, seed: int) -> List[Shown]:
    """``num`` configurations sampled from the scale network (seeded), with its scores."""
    sampled = model.scale_network.sample(num, generator=torch.Generator().manual_seed(seed))
    if sampled.fell_back:
        CONSOLE.print(f"[yellow]{sampled.message}")
    scales, scores = sampled.scales.detach().cpu(), sampled.probability.detach().cpu().tolist()
    return [Shown(f"#{i}", scales[i], scores[i]) for i in range(len(scales))]


SHEET_OUTPUTS = ("rgb", "z_depth", "segmentation")
"""The outputs a contact sheet shows per configuration (depth along the camera axis, as the scene's depth maps)."""
SHEET_PANEL_NAMES = ("rgb", "depth", "segm.")


@dataclass
class RenderContactSheet:
    """One picture of a trained run: test views as rows; the test image, the true configuration and N sampled ones
    as columns; each as RGB, depth and segmentation, with a caption per column (scales and scores)."""

    load_config: Path
    """Path to the run's config.yml."""
    output_path: Path = Path("renders/contact-sheet.png")
    """The picture (.png or .jpg). A JSON file with the same stem records its views and configurations."""
    configurations_file: Optional[Path] = None
    """Pick the sampled configurations from this osn-sample-configurations file: N that span its family (those the
    validity rule labels valid first). Without it, N are sampled from the scale network."""
    num: int = 4
    """Sampled configurations shown."""
    views: int = 4
    """Test views shown (spread evenly over the run's evaluation split)."""
    seed: int = 0
    """Seed of the sampling (without ``--configurations-file``)."""
    overwrite: bool = False
    """Replace an existing output file."""

    def main(self) -> None:
        from nerfstudio.utils.eval_utils import eval_setup

        if self.output_path.exists() and not self.overwrite:
            raise SystemExit(f"{self.output_path} exists; choose another --output-path or pass --overwrite.")
        _, pipeline, _, _ = eval_setup(self.load_config, test_mode="inference")
        model = pipeline.model
        shown = self.configurations(model)
        dataset = pipeline.datamanager.eval_dataset
        views = spread_indices(len(dataset), self.views)
        rows = []
        with progress_bar(CONSOLE) as progress:
            task = progress.add_task("Rendering the contact sheet", total=len(views) * len(shown))
            for view in views:
                data, camera = dataset[view], dataset.cameras[view : view + 1]
                near_far = depth_range(data.get("gt_depth"))
                cells = [captured_panels(model, data, near_far)]
                for configuration in shown:
                    images = render_images(pipeline, camera, configuration.scales, SHEET_OUTPUTS, near_far,
                                           partial(progress.advance, task))[0]
                    cells.append([images[name] for name in SHEET_OUTPUTS])
                rows.append(cells)
        names = model.object_names
        captions = [["test image", "(the data)"], *(configuration.caption(names) for configuration in shown)]
        sheet = contact_sheet(rows, captions, [f"view {view}" for view in views])
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(self.output_path)
        record = {
            "views": [str(dataset.image_filenames[view]) for view in views],
            "columns": [{"label": c.label, "scales": dict(zip(names, c.scales.tolist())), "osn_score": c.score,
                         "exact_validity": c.exact} for c in shown],
        }
        self.output_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        CONSOLE.print(f"Contact sheet ({len(views)} test views, {len(shown)} configurations): {self.output_path}",
                      soft_wrap=True)

    def configurations(self, model) -> List[Shown]:
        """The true configuration (when the scene has one), then ``num`` sampled ones."""
        truth = []
        if not torch.isnan(model.true_scales).any():
            scales = model.true_scales.detach()
            with torch.no_grad():
                score = float(model.scale_network.probability(scales[None])[0])
            truth = [Shown("truth", scales.cpu(), score)]
        if self.configurations_file is None:
            return truth + sampled_configurations(model, self.num, self.seed)
        report = read_configurations_file(self.configurations_file)
        if truth and "ground_truth" in report:
            truth[0].exact = report["ground_truth"].get("exact_validity")
        picked = spread_configurations(report, self.num)
        choices = [ConfigurationChoice(configurations_file=self.configurations_file, index=i) for i in picked]
        return truth + [shown_from_report(report, i, resolve_configuration(model, c)) for i, c in zip(picked, choices)]


def spread_indices(count: int, num: int) -> List[int]:
    """Up to ``num`` of ``range(count)``, evenly spread, first and last included."""
    return sorted(set(np.linspace(0, count - 1, min(num, count)).round().astype(int).tolist())) if count else []


def spread_configurations(report: dict, num: int) -> List[int]:
    """Indices of ``num`` configurations of an osn-sample-configurations report that span the family it samples.

    The one the scale network scores highest comes first; then, each time, the one farthest (largest log-scale
    gap to the nearest already picked) from those picked. Those the validity rule labels valid are picked before
    the others."""
    configurations = report["configurations"]
    names = list(configurations[0]["scales"]) if configurations else []
    log_scales = np.log([[c["scales"][name] for name in names] for c in configurations])
    valid = [i for i, c in enumerate(configurations) if c.get("valid", True)]
    picked: List[int] = []
    for pool in (valid, [i for i in range(len(configurations)) if i not in valid]):
        pool = list(pool)
        while pool and len(picked) < num:
            if picked:
                gap = [np.abs(log_scales[i] - log_scales[picked]).max(-1).min() for i in pool]
            else:
                gap = [configurations[i].get("osn_score", 0.0) for i in pool]
            picked.append(pool.pop(int(np.argmax(gap))))
    return picked


def depth_range(depth: Optional[torch.Tensor]) -> Optional[Tuple[float, float]]:
    """(near, far) of a depth map's valid (finite, positive) pixels, else None (each image then uses its own)."""
    if depth is None:
        return None
    values = depth[torch.isfinite(depth) & (depth > 0)]
    if values.numel() == 0:
        return None
    return float(values.min()), float(values.max())


def captured_panels(model, data: Dict[str, torch.Tensor], near_far: Optional[Tuple[float, float]]) -> List[np.ndarray]:
    """The test image, its depth map and its segmentation (model colours) as panels; grey where the data has none."""
    image = data["image"][..., :3]
    panels = [(image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)]
    missing = np.full_like(panels[0], 200)
    if "gt_depth" in data:
        depth = data["gt_depth"].float()
        panels.append(to_image({"z_depth": depth, "accumulation": (depth > 0).float()}, "z_depth", near_far))
    else:
        panels.append(with_caption(missing, ["no depth"]))
    if "object_id" in data:
        ids = data["object_id"][..., 0].long()
        colours = torch.cat([model.segmentation_colors().detach().cpu(), torch.full((1, 3), 0.5)])
        unknown = (ids < 0) | (ids >= len(colours) - 1)
        panels.append(to_image({"segmentation": colours[ids.masked_fill(unknown, len(colours) - 1)]}, "segmentation"))
    else:
        panels.append(with_caption(missing, ["no segmentation"]))
    return panels


def render_images(
    pipeline,
    cameras,
    scales: torch.Tensor,
    output_names: Sequence[str],
    depth_range: Optional[Tuple[float, float]] = None,
    advance: Callable[[], None] = lambda: None,
) -> List[Dict[str, np.ndarray]]:
    """Per camera, [H, W, 3] uint8 images of ``output_names`` at configuration ``scales`` (``to_image``);
    ``advance`` is called after each camera. The model's render configuration is restored afterwards."""
    model = pipeline.model
    images = []
    with model.at_configuration(scales):
        for i in range(len(cameras)):
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(cameras[i : i + 1].to(pipeline.device))
            for name in output_names:
                if name not in outputs:
                    raise SystemExit(f"No output {name!r}; this model renders {sorted(outputs)}.")
            images.append({name: to_image(outputs, name, depth_range) for name in output_names})
            advance()
    return images


def render_frames(
    pipeline, cameras, scales: torch.Tensor, output_name: str, advance: Callable[[], None] = lambda: None
) -> List[np.ndarray]:
    """[H, W, 3] uint8 images of ``output_name`` for every camera at configuration ``scales``."""
    return [images[output_name] for images in render_images(pipeline, cameras, scales, [output_name], advance=advance)]


def to_image(
    outputs: Dict[str, torch.Tensor], name: str, depth_range: Optional[Tuple[float, float]] = None
) -> np.ndarray:
    """An output as an 8-bit RGB image: depth-like outputs through the depth colormap (over ``depth_range`` when
    given, else each image's own), others as colours."""
    value = outputs[name]
    if "depth" in name:
        near, far = depth_range if depth_range is not None else (None, None)
        value = colormaps.apply_depth_colormap(value, accumulation=outputs.get("accumulation"), near_plane=near,
                                               far_plane=far)
    else:
        value = colormaps.apply_colormap(value, colormaps.ColormapOptions())
    return (value.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def grid(images: List[np.ndarray], columns: Optional[int] = None, gap: int = 2) -> np.ndarray:
    """Images of equal size tiled row by row with a white ``gap`` between them."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    canvas = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top : top + height, left : left + width] = image
    return canvas


def stack(images: List[np.ndarray], axis: int, gap: int) -> np.ndarray:
    """Images side by side (``axis`` 1) or one above the other (``axis`` 0) with a white ``gap``; smaller ones are
    padded with white at their right or bottom."""
    across = 1 - axis
    size = max(image.shape[across] for image in images)
    padded = []
    for i, image in enumerate(images):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[across] = (0, size - image.shape[across])
        padded.append(np.pad(image, pad, constant_values=255))
        if gap and i < len(images) - 1:
            shape = [0, 0, 3]
            shape[axis], shape[across] = gap, size
            padded.append(np.full(shape, 255, np.uint8))
    return np.concatenate(padded, axis=axis)


CAPTION_SEPARATOR = "  "
"""Between the parts of a caption line; a line too wide for its tile wraps there."""
CAPTION_PADDING = 2


@lru_cache(maxsize=1)
def caption_font() -> ImageFont.ImageFont:
    """PIL's default font (a small sans-serif where Pillow has FreeType, else its bitmap font)."""
    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(text: str) -> int:
    left, _, right, _ = caption_font().getbbox(text)
    return right - left


def line_height() -> int:
    return caption_font().getbbox("Ag|")[3] + 2


def wrap_caption(lines: Sequence[str], width: int) -> List[str]:
    """``lines`` broken at the separator wherever one would be wider than ``width`` pixels (a part that alone is
    wider stays whole, and is cut off where drawn)."""
    wrapped = []
    for line in lines:
        current = ""
        for part in line.split(CAPTION_SEPARATOR):
            joined = f"{current}{CAPTION_SEPARATOR}{part}" if current else part
            if current and text_width(joined) > width - 2 * CAPTION_PADDING:
                wrapped.append(current)
                current = part
            else:
                current = joined
        wrapped.append(current)
    return wrapped


def caption_strip(lines: Sequence[str], width: int, height: Optional[int] = None) -> np.ndarray:
    """A white strip ``width`` wide with ``lines`` in black, wrapped to fit; as tall as they need unless
    ``height`` is given."""
    wrapped = wrap_caption(lines, width)
    height = height if height is not None else len(wrapped) * line_height() + 2 * CAPTION_PADDING
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(wrapped):
        draw.text((CAPTION_PADDING, CAPTION_PADDING + i * line_height()), line, fill=(0, 0, 0), font=caption_font())
    return np.asarray(strip)


def with_caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``image`` (same size) with ``lines`` in white on a darkened band along its bottom, wrapped to its width."""
    height, width = image.shape[:2]
    wrapped = wrap_caption(lines, width)
    band = min(height, len(wrapped) * line_height() + 2 * CAPTION_PADDING)
    captioned = image.copy()
    captioned[height - band :] = (captioned[height - band :].astype(np.float32) * 0.35).astype(np.uint8)
    picture = Image.fromarray(captioned)
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(wrapped):
        draw.text((CAPTION_PADDING, height - band + CAPTION_PADDING + i * line_height()), line, fill=(255, 255, 255),
                  font=caption_font())
    return np.asarray(picture)


SHEET_GAP = 4
"""White pixels between the columns of a contact sheet, and between its label column and the first one."""
SHEET_ROW_GAP = 10
"""White pixels between the test views (rows) of a contact sheet."""
SHEET_PANEL_GAP = 1
"""White pixels between the panels (RGB, depth, segmentation) of one cell."""


def contact_sheet(rows: List[List[List[np.ndarray]]], captions: List[List[str]], row_labels: List[str],
                  panel_names: Sequence[str] = SHEET_PANEL_NAMES) -> np.ndarray:
    """A picture of ``rows[view][column]`` = [panel, ...] (all panels of one size): a cell stacks its panels
    vertically; one column per configuration under its caption; one row per view, labelled at its left with
    ``row_labels[view]`` and the panel names."""
    height, width = rows[0][0][0].shape[:2]
    labels = [["", panel_names[0]], *([name] for name in panel_names[1:])]
    label_width = max(text_width(text) for text in [*row_labels, *panel_names]) + 2 * CAPTION_PADDING
    header_lines = max(len(wrap_caption(caption, width)) for caption in captions)
    header_height = header_lines * line_height() + 2 * CAPTION_PADDING
    header = stack([np.full((header_height, label_width, 3), 255, np.uint8),
                    *(caption_strip(caption, width, header_height) for caption in captions)], axis=1, gap=SHEET_GAP)
    blocks = [header]
    for label, cells in zip(row_labels, rows):
        labels[0][0] = label
        label_column = stack([caption_strip(lines, label_width, height) for lines in labels], 0, SHEET_PANEL_GAP)
        columns = [stack(panels, axis=0, gap=SHEET_PANEL_GAP) for panels in cells]
        blocks.append(stack([label_column, *columns], axis=1, gap=SHEET_GAP))
    return np.concatenate([blocks[0], np.full((SHEET_GAP, blocks[0].shape[1], 3), 255, np.uint8),
                           stack(blocks[1:], axis=0, gap=SHEET_ROW_GAP)], axis=0)


def write_frames(path: Path, frames: List[np.ndarray], seconds: float) -> None:
    """One frame: an image; several: a video at ``len(frames) / seconds`` frames per second (needs ffmpeg)."""
    import mediapy

    if len(frames) == 1 and path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        mediapy.write_image(path, frames[0])
        return
    if path.suffix.lower() != ".mp4":
        raise SystemExit(f"{path}: a camera path renders a video; use an .mp4 output path.")
    # video encoders want even sizes
    frames = [np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), constant_values=255) for f in frames]
    mediapy.write_video(path, frames, fps=max(len(frames) / max(seconds, 1e-3), 1.0))


Commands = tyro.conf.FlagConversionOff[
    Union[
        Annotated[RenderCameraPath, tyro.conf.subcommand(name="camera-path")],
        Annotated[RenderInterpolated, tyro.conf.subcommand(name="interpolate")],
        Annotated[SpiralRender, tyro.conf.subcommand(name="spiral")],
        Annotated[DatasetRender, tyro.conf.subcommand(name="dataset")],
        Annotated[RenderConfigurations, tyro.conf.subcommand(name="configurations")],
        Annotated[RenderContactSheet, tyro.conf.subcommand(name="contact-sheet")],
    ]
]


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(Commands).main()


if __name__ == "__main__":
    entrypoint()
