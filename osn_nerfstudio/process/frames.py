"""Stage 1: the video's frames, from a video file or a folder of images, resampled and downscaled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from osn_nerfstudio.data.scene_format import SceneFormatError, read_rgb
from osn_nerfstudio.process.common import CONSOLE, ProcessDataError, progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FRAME_RATE = 30.0
"""Frame rate assumed for a folder of frames, or for a video whose file does not state one."""


@dataclass
class FrameSamplingConfig:
    """Which frames of the input to keep, and at what size."""

    fps: Optional[float] = None
    """Frames per second to keep: every round(input rate / fps)-th frame. Default: every frame."""
    max_frames: Optional[int] = None
    """Keep at most this many frames (the first ones after resampling: tracking needs consecutive frames)."""
    downscale: float = 1.0
    """Divide the frames' width and height by this factor (masks and prompts follow)."""
    frame_rate: float = DEFAULT_FRAME_RATE
    """Frame rate of a folder of frames (a video's file states its own); sets the frame times."""

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ProcessDataError(f"--fps must be positive, got {self.fps}.")
        if self.max_frames is not None and self.max_frames < 2:
            raise ProcessDataError(
                f"--max-frames must be at least 2 (a video needs two frames), got {self.max_frames}."
            )
        if not self.downscale >= 1.0:
            raise ProcessDataError(f"--downscale must be >= 1 (1 keeps the input size), got {self.downscale}.")
        if not self.frame_rate > 0:
            raise ProcessDataError(f"--frame-rate must be positive, got {self.frame_rate}.")

    def step(self, input_rate: float) -> int:
        """Keep every ``step``-th input frame."""
        return 1 if self.fps is None else max(1, int(round(input_rate / self.fps)))


@dataclass
class Frames:
    """The frames the scene is made of."""

    images: np.ndarray
    """[F, H, W, 3] uint8 RGB, downscaled."""
    times: np.ndarray
    """[F] seconds from the start of the input."""
    sources: List[str]
    """Where each frame came from (a file name, or the frame number in the video), for messages."""
    input_size: Tuple[int, int]
    """(width, height) of the input frames before downscaling: prompts and user masks use this size."""

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the processed frames."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    @property
    def scale(self) -> float:
        """Processed pixels per input pixel (1 / downscale, up to rounding of the size)."""
        return self.size[0] / self.input_size[0]


def output_size(input_size: Tuple[int, int], downscale: float) -> Tuple[int, int]:
    """(width, height) after dividing by ``downscale``, at least 1 pixel each."""
    return max(1, int(round(input_size[0] / downscale))), max(1, int(round(input_size[1] / downscale)))


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Area-averaged resize of an RGB image to (width, height); unchanged when already that size."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_labels(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (labels are ids, never averaged)."""
    if (labels.shape[1], labels.shape[0]) == tuple(size):
        return labels
    return cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).astype(labels.dtype)


def image_files(folder: Path) -> List[Path]:
    """The image files of ``folder`` in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_frame_folder(folder: Path, config: FrameSamplingConfig) -> Frames:
    """Every ``config.step``-th image of ``folder`` (name order), all of one size."""
    files = image_files(folder)
    if len(files) < 2:
        raise ProcessDataError(
            f"{folder}: found {len(files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); "
            "a video needs at least 2 frames."
        )
    step = config.step(config.frame_rate)
    picked = list(range(0, len(files), step))[: config.max_frames]
    images: List[np.ndarray] = []
    size: Optional[Tuple[int, int]] = None
    with progress_bar("Reading frames", len(picked)) as advance:
        for index in picked:
            try:
                rgb = read_rgb(files[index])
            except SceneFormatError as err:
                raise ProcessDataError(f"{err} Remove or replace that file.") from err
            if size is None:
                size = (rgb.shape[1], rgb.shape[0])
            elif (rgb.shape[1], rgb.shape[0]) != size:
                raise ProcessDataError(
                    f"{files[index]}: is {rgb.shape[1]}x{rgb.shape[0]} "
                    f"but {files[picked[0]].name} is {size[0]}x{size[1]}; every frame must have the same size."
                )
            images.append(resize_image(rgb, output_size(size, config.downscale)))
            advance()
    assert size is not None
    return Frames(
        images=np.stack(images),
        times=np.array(picked, dtype=np.float64) / config.frame_rate,
        sources=[files[i].name for i in picked],
        input_size=size,
    )


def read_video(path: Path, config: FrameSamplingConfig) -> Frames:
    """Every ``config.step``-th frame of a video file that OpenCV can decode."""
    capture = cv2.VideoCapture(str(path))
    advice = "Check the file, or extract its frames with ffmpeg and pass the folder (osn-process-data images)."
    if not capture.isOpened():
        raise ProcessDataError(f"{path}: cannot open the video (unreadable file or unsupported codec). {advice}")
    try:
        rate = capture.get(cv2.CAP_PROP_FPS)
        if not (np.isfinite(rate) and rate > 0):
            CONSOLE.print(
                f"[yellow]{path}: the video states no frame rate; assuming {DEFAULT_FRAME_RATE} fps.[/yellow]"
            )
            rate = DEFAULT_FRAME_RATE
        step = config.step(rate)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        expected = -(-count // step) if count > 0 else 0
        if config.max_frames is not None:
            expected = min(expected, config.max_frames) if expected else config.max_frames
        images: List[np.ndarray] = []
        indices: List[int] = []
        index = 0
        with progress_bar("Reading video frames", max(expected, 1)) as advance:
            while config.max_frames is None or len(images) < config.max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                if index % step == 0:
                    images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    indices.append(index)
                    advance()
                index += 1
    finally:
        capture.release()
    if len(images) < 2:
        raise ProcessDataError(
            f"{path}: decoded {len(images)} frame(s) at the chosen --fps; a video needs at least 2. {advice}"
        )
    size = (images[0].shape[1], images[0].shape[0])
    target = output_size(size, config.downscale)
    return Frames(
        images=np.stack([resize_image(image, target) for image in images]),
        times=np.array(indices, dtype=np.float64) / rate,
        sources=[f"{path.name} frame {i}" for i in indices],
        input_size=size,
    )


def read_frames(source: Path, config: FrameSamplingConfig) -> Frames:
    """Frames of a video file or of a folder of images."""
    source = Path(source)
    if not source.exists():
        raise ProcessDataError(f"{source}: does not exist; pass a video file or a folder of frames with --data.")
    return read_frame_folder(source, config) if source.is_dir() else read_video(source, config)


def frame_label(frames: Frames, frame: int) -> str:
    """``frame 3 (00012.png)``: a frame as messages name it."""
    return f"frame {frame} ({frames.sources[frame]})"


def select_frames(frames: Frames, keep: Sequence[int]) -> Frames:
    """The frames at positions ``keep``, in order."""
    keep = list(keep)
    return Frames(
        images=frames.images[keep],
        times=frames.times[keep],
        sources=[frames.sources[i] for i in keep],
        input_size=frames.input_size,
    )
