"""Stage 2a: instance masks the user provides, as per-frame label maps or one binary-mask folder per object.

Either form becomes one [F, H, W] label map per frame at the processed resolution: 0 is the background,
k object k, and the ignore label marks unknown pixels. ``sam.py`` is the other way to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from osn_nerfstudio.data.scene_format import IMAGE_READ_ERRORS, SceneFormatError, read_mask
from osn_nerfstudio.process.common import ProcessDataError, progress_bar
from osn_nerfstudio.process.frames import Frames, frame_label, resize_labels

MASK_SUFFIXES = (".png", ".npy")
BACKGROUND_NAME = "background"


def mask_files(folder: Path) -> List[Path]:
    """Label-map or binary-mask files of ``folder`` in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES)


def _read_array(path: Path) -> np.ndarray:
    """[H, W] integers from a single-channel PNG or a 2D ``.npy`` array."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ProcessDataError(f"{path}: cannot read the mask ({err}).") from err
        if array.ndim != 2 or array.dtype.kind not in "biu":
            raise ProcessDataError(
                f"{path}: a mask array must be 2D integers or booleans, found {array.dtype} {list(array.shape)}."
            )
        return array.astype(np.int64)
    try:
        return read_mask(path)
    except SceneFormatError as err:
        if "mode" not in str(err):
            raise ProcessDataError(str(err)) from err
    try:  # an RGB or RGBA binary mask: any non-black pixel is the object
        with Image.open(path) as image:
            return (np.asarray(image.convert("L")) > 0).astype(np.int64)
    except IMAGE_READ_ERRORS as err:
        raise ProcessDataError(f"{path}: cannot read the mask ({err}).") from err


def _fit(path: Path, labels: np.ndarray, frames: Frames) -> np.ndarray:
    """Labels at the processed size; masks may come at the input frames' size or the processed one."""
    size = (labels.shape[1], labels.shape[0])
    if size not in (frames.input_size, frames.size):
        raise ProcessDataError(
            f"{path}: is {size[0]}x{size[1]}, but the frames are {frames.input_size[0]}x{frames.input_size[1]}"
            + (f" ({frames.size[0]}x{frames.size[1]} after --downscale)" if frames.size != frames.input_size else "")
            + "; a mask must match its frame."
        )
    return resize_labels(labels, frames.size)


def _check_count(folder: Path, files: Sequence[Path], frames: Frames) -> None:
    if len(files) != frames.num_frames:
        raise ProcessDataError(
            f"{folder}: holds {len(files)} mask file(s) ({', '.join(MASK_SUFFIXES)}) but the video has "
            f"{frames.num_frames} frames (after --fps and --max-frames); give exactly one mask per processed frame, "
            "in the frames' order (file name order)."
        )


def read_label_maps(
    folder: Path, frames: Frames, object_names: Optional[List[str]], ignore_label: int
) -> Tuple[np.ndarray, List[str]]:
    """[F, H, W] labels from one label map per frame, and the object names (background first).

    Without ``object_names`` the largest label found sets the number of objects.
    """
    files = mask_files(folder)
    _check_count(folder, files, frames)
    labels = []
    with progress_bar("Reading masks", len(files)) as advance:
        for path in files:
            labels.append(_fit(path, _read_array(path), frames))
            advance()
    stacked = np.stack(labels)
    if object_names is None:
        largest = int(np.where(stacked == ignore_label, 0, stacked).max())
        object_names = [f"object-{k}" for k in range(1, largest + 1)]
    num_objects = len(object_names) + 1
    for v, (path, frame_labels) in enumerate(zip(files, stacked)):
        values = np.unique(frame_labels)
        unknown = values[((values >= num_objects) & (values != ignore_label)) | (values < 0)]
        if unknown.size:
            raise ProcessDataError(
                f"{path} ({frame_label(frames, v)}): has label(s) {unknown.tolist()[:10]}, but the objects are "
                f"0..{num_objects - 1} (0 the background) and the ignore label is {ignore_label}; "
                "name every object with --object-names or fix the mask."
            )
    return stacked, [BACKGROUND_NAME, *object_names]


def read_object_mask_folders(folders: Sequence[Path], frames: Frames, ignore_label: int) -> np.ndarray:
    """[F, H, W] labels from one binary-mask folder per object (object k from ``folders[k - 1]``).

    A pixel claimed by two objects is unknown (``ignore_label``); a pixel no object claims is background.
    """
    per_folder = []
    for folder in folders:
        files = mask_files(folder)
        _check_count(folder, files, frames)
        per_folder.append(files)
    labels = np.zeros((frames.num_frames, frames.size[1], frames.size[0]), dtype=np.int64)
    with progress_bar("Reading masks", frames.num_frames * len(folders)) as advance:
        for v in range(frames.num_frames):
            claims = np.zeros(labels.shape[1:], dtype=np.int64)
            for k, files in enumerate(per_folder, start=1):
                inside = _fit(files[v], _read_array(files[v]), frames) > 0
                claims += inside
                labels[v][inside] = k
                advance()
            labels[v][claims > 1] = ignore_label
    return labels


def read_user_masks(
    folder: Path, frames: Frames, object_names: Optional[List[str]], ignore_label: int
) -> Tuple[np.ndarray, List[str]]:
    """Labels [F, H, W] and object names (background first) from ``--masks``.

    ``folder`` holds either one label map per frame, or one sub-folder of binary masks per object (the
    sub-folder's name is the object's name).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ProcessDataError(f"{folder}: --masks must be a folder of label maps or of per-object mask folders.")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if mask_files(folder):
        if subfolders:
            raise ProcessDataError(
                f"{folder}: holds both mask files and sub-folders; "
                "use one layout: label maps, or one folder per object."
            )
        return read_label_maps(folder, frames, object_names, ignore_label)
    if not subfolders:
        raise ProcessDataError(f"{folder}: holds no mask files ({', '.join(MASK_SUFFIXES)}) and no per-object folders.")
    names = [BACKGROUND_NAME, *(object_names or [p.name for p in subfolders])]
    if len(names) != len(subfolders) + 1:
        raise ProcessDataError(
            f"{folder}: has {len(subfolders)} object folder(s) but --object-names gives {len(names) - 1} name(s)."
        )
    return read_object_mask_folders(subfolders, frames, ignore_label), names


def check_visible(labels: np.ndarray, names: Sequence[str], what: str) -> None:
    """Raise naming every object that has no pixel in any frame."""
    counts = np.array([(labels == k).sum() for k in range(len(names))])
    unseen = [f"'{names[k]}' (label {k})" for k in range(1, len(names)) if counts[k] == 0]
    if unseen:
        raise ProcessDataError(
            f"object(s) {', '.join(unseen)} never visible: no pixel of any of the {labels.shape[0]} frames' masks "
            f"({what}) belongs to them. Fix the masks or prompts, or leave those objects out."
        )
    if counts[0] == 0:
        raise ProcessDataError(
            f"the background has no pixel in any frame's mask ({what}); label 0 must be the background."
        )
