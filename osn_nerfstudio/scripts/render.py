"""osn-render: nerfstudio's ns-render on osn runs, at a chosen configuration of object scales.

    osn-render camera-path --load-config RUN/config.yml --camera-path-filename path.json --index 3 \
        --configurations-file RUN/configurations.json
    osn-render interpolate --load-config RUN/config.yml --ground-truth
    osn-render spiral      --load-config RUN/config.yml --scales box=2.0 sphere=0.8
    osn-render dataset     --load-config RUN/config.yml --split test
    osn-render configurations --load-config RUN/config.yml --num 4 [--camera-path-filename path.json]

The first four are ns-render's own subcommands with every ns-render option; the configuration options pick
the scales the run is rendered at (without any, the run's own render configuration is used, which is also
what plain ``ns-render`` renders). ``configurations`` renders one view or one camera path under N sampled
valid configurations side by side, so the whole family of scenes the video admits shows at a glance.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import tyro
from typing_extensions import Annotated

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
            raise ConfigurationError("This scene has no ground-truth scales (its scene.json has no evaluation.relative_scales).")
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
        raise ConfigurationError(f"The background {names[0]!r} anchors the units; its scale must be 1, got {float(scales[0])}.")
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


def configuration_from_file(path: Path, index: int) -> Dict[str, float]:
    """Scales by object name of configuration ``index`` in an osn-sample-configurations JSON file."""
    try:
        report = json.loads(Path(path).read_text())
        configurations = report["configurations"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigurationError(f"{path}: not a configurations file written by osn-sample-configurations ({error}).") from None
    if not 0 <= index < len(configurations):
        raise ConfigurationError(f"{path} holds configurations 0..{len(configurations) - 1}; --index {index} is not one of them.")
    return {name: float(value) for name, value in configurations[index]["scales"].items()}


def warn_outside_ranges(names: List[str], scales: torch.Tensor, ranges: torch.Tensor) -> None:
    for k, name in enumerate(names[1:], start=1):
        lo, hi = ranges[k].tolist()
        if not lo <= float(scales[k]) <= hi:
            CONSOLE.print(f"[yellow]{name}: scale {float(scales[k]):.4g} lies outside its range [{lo:.4g}, {hi:.4g}]; rendering anyway.")


def apply_configuration(pipeline, choice: ConfigurationChoice) -> torch.Tensor:
    """Set the model's render configuration to ``choice``; returns the scales."""
    model = pipeline.model
    scales = resolve_configuration(model, choice)
    model.render_scales.copy_(scales.to(model.render_scales.device))
    CONSOLE.print(f"Rendering at {choice.describe()}: " + ", ".join(f"{n}={float(s):.4g}" for n, s in zip(model.object_names, scales)))
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
class RenderConfigurations:
    """One view or one camera path rendered under N configurations side by side (an image or video grid)."""

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
        scales = self.configurations(pipeline)
        camera_path = json.loads(self.camera_path_filename.read_text()) if self.camera_path_filename is not None else None
        cameras = self.cameras(pipeline, camera_path)
        tiles = [render_frames(pipeline, cameras, configuration, self.rendered_output_name) for configuration in scales]
        frames = [grid([tile[i] for tile in tiles], self.columns) for i in range(len(cameras))]
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        seconds = 1.0 if camera_path is None else float(camera_path.get("seconds", 5.0))
        write_frames(self.output_path, frames, seconds=seconds)
        names = pipeline.model.object_names
        record = {"configurations": [{name: float(s) for name, s in zip(names, row)} for row in scales.tolist()]}
        self.output_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        CONSOLE.print(f"Wrote {self.output_path} ({len(scales)} configurations, {len(frames)} frame(s))")

    def configurations(self, pipeline) -> torch.Tensor:
        model = pipeline.model
        if self.configurations_file is not None:
            rows = [resolve_configuration(model, ConfigurationChoice(configurations_file=self.configurations_file, index=i))
                    for i in range(self.num)]
            return torch.stack(rows)
        torch.manual_seed(self.seed)
        sampled = model.scale_network.sample(self.num)
        if sampled.fell_back:
            CONSOLE.print(f"[yellow]{sampled.message}")
        return sampled.scales.detach().cpu()

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


def render_frames(pipeline, cameras, scales: torch.Tensor, output_name: str) -> List[np.ndarray]:
    """[H, W, 3] uint8 images of ``output_name`` for every camera at configuration ``scales``."""
    model = pipeline.model
    saved = model.render_scales.clone()
    model.render_scales.copy_(scales.to(saved.device))
    try:
        images = []
        for i in range(len(cameras)):
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(cameras[i : i + 1].to(pipeline.device))
            if output_name not in outputs:
                raise SystemExit(f"No output {output_name!r}; this model renders {sorted(outputs)}.")
            images.append(to_image(outputs, output_name))
        return images
    finally:
        model.render_scales.copy_(saved)


def to_image(outputs: Dict[str, torch.Tensor], name: str) -> np.ndarray:
    """An output as an 8-bit RGB image: depth-like outputs through the depth colormap, others as colours."""
    value = outputs[name]
    if "depth" in name:
        value = colormaps.apply_depth_colormap(value, accumulation=outputs.get("accumulation"))
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
    ]
]


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(Commands).main()


if __name__ == "__main__":
    entrypoint()
