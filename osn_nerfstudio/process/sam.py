"""Stage 2b: instance masks from segment-anything (SAM), prompted on chosen frames and carried through the video.

The user prompts each object (points and/or a box) on the first frame it should be segmented in, and may
prompt it again on any later frame (re-prompting, e.g. where it reappears or propagation went wrong).
On every other frame the object's mask from the previous frame is carried forward by the optical flow,
and SAM is prompted from that carried mask (its box and its most interior points); of SAM's candidate
masks the one agreeing best with the carried mask is kept. Where objects' masks overlap, the higher
SAM logit wins. The SAM variant (vit_b/l/h, or any other ViT size) is read off the checkpoint's tensor
shapes, so no model type has to be given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from osn_nerfstudio.process.common import ProcessDataError, progress_bar
from osn_nerfstudio.process.flow import VideoFlow, warp_labels
from osn_nerfstudio.process.frames import Frames
from osn_nerfstudio.process.masks import BACKGROUND_NAME

CHECKPOINTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth (2.4 GB, best masks)",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth (1.2 GB)",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth (375 MB, fastest)",
}
RELEASED = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
"""(encoder embed dim, depth) of the released SAM models."""
PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def download_advice() -> str:
    lines = [f"  {name}: {url}" for name, url in CHECKPOINTS.items()]
    return (
        "segment-anything needs a model checkpoint. Download one of\n"
        + "\n".join(lines)
        + "\nand pass it with --sam-checkpoint PATH (the model type is read from the file), together with\n"
        "--sam-prompts (points or a box per object on the first frame). Or give your own masks with --masks."
    )


# ----------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class SamArchitecture:
    """The sizes that tell SAM variants apart; everything else is shared by every SAM release."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256

    @property
    def name(self) -> str:
        released = RELEASED.get((self.embed_dim, self.depth))
        return released or f"custom ViT (embed dim {self.embed_dim}, depth {self.depth}, {self.num_heads} heads)"


def sam_architecture(state_dict: Dict[str, "object"]) -> SamArchitecture:
    """Read the architecture off a SAM state dict's tensor shapes.

    Head count: relative-position tables have one column per head dimension. Global-attention blocks:
    their tables span the whole feature map (2 * grid - 1 rows), windowed ones the window.
    """
    if PATCH_KEY not in state_dict:
        raise ProcessDataError(f"not a segment-anything checkpoint: it has no '{PATCH_KEY}' tensor.")
    embed_dim, _, patch_size, _ = state_dict[PATCH_KEY].shape
    grid = state_dict["image_encoder.pos_embed"].shape[1]
    depth = 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key)))
    rows = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    head_dim = rows[0][1]
    global_blocks = tuple(i for i, shape in enumerate(rows) if shape[0] == 2 * grid - 1)
    windowed = [shape[0] for shape in rows if shape[0] != 2 * grid - 1]
    return SamArchitecture(
        embed_dim=int(embed_dim),
        depth=depth,
        num_heads=int(embed_dim // head_dim),
        global_attn_indexes=global_blocks,
        window_size=int((windowed[0] + 1) // 2) if windowed else 0,
        image_size=int(grid * patch_size),
        patch_size=int(patch_size),
        prompt_embed_dim=int(state_dict["image_encoder.neck.0.weight"].shape[0]),
    )


def build_sam(architecture: SamArchitecture):
    """An untrained SAM of ``architecture``, assembled from segment-anything's own modules as its builders do."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = architecture
    embedding = a.image_size // a.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a.depth,
            embed_dim=a.embed_dim,
            img_size=a.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a.num_heads,
            patch_size=a.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a.global_attn_indexes,
            window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(embedding, embedding),
            input_image_size=(a.image_size, a.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=a.prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(checkpoint: Optional[Path], device: str = "cpu"):
    """(SAM model in eval mode, its architecture) from a checkpoint file (a state dict, as Meta releases them)."""
    import torch

    if checkpoint is None:
        raise ProcessDataError(download_advice())
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ProcessDataError(f"{checkpoint}: SAM checkpoint not found.\n{download_advice()}")
    try:
        state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same to the user
        raise ProcessDataError(
            f"{checkpoint}: cannot load it as a PyTorch checkpoint ({err}).\n{download_advice()}"
        ) from err
    if not isinstance(state_dict, dict):
        raise ProcessDataError(f"{checkpoint}: expected a SAM state dict, found {type(state_dict).__name__}.")
    architecture = sam_architecture(state_dict)
    model = build_sam(architecture)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ProcessDataError(f"{checkpoint}: does not fit SAM {architecture.name} ({err}).") from err
    return model.to(device).eval(), architecture


# ----------------------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """Points and/or a box for one object on one frame, in processed-frame pixels."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """[P, 2] (x, y) pixel positions."""
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """[P] 1 for a point on the object, 0 for a point off it."""
    box: Optional[np.ndarray] = None
    """[4] (x0, y0, x1, y1) box around the object."""


@dataclass
class ObjectPrompts:
    name: str
    frames: Dict[int, Prompt]
    """Prompt per frame index; the first one starts the object's segmentation."""


def _load_prompt_json(text: str) -> dict:
    """The prompt JSON, from a file path or given inline."""
    source = "--sam-prompts"
    candidate = Path(text)
    if not text.lstrip().startswith("{") and candidate.is_file():
        source, text = str(candidate), candidate.read_text()
    elif not text.lstrip().startswith("{"):
        raise ProcessDataError(f"--sam-prompts {text!r}: no such file, and not inline JSON (which starts with '{{').")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProcessDataError(f"{source}: not valid JSON ({err}).") from err
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise ProcessDataError(
            f'{source}: expected {{"objects": [{{"name": ..., "frames": {{"0": {{"box": [...]}}}}}}, ...]}}.'
        )
    return data


def _prompt(where: str, data: dict, frames: Frames) -> Prompt:
    """One frame's prompt, checked against the input frame size and scaled to processed pixels."""
    width, height = frames.input_size
    if not isinstance(data, dict) or not ({"points", "box"} & set(data)):
        raise ProcessDataError(f"{where}: give 'points' ([[x, y], ...]) and/or 'box' ([x0, y0, x1, y1]).")
    try:
        points = np.asarray(data.get("points", []), dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(data.get("labels", [1] * len(points)), dtype=np.int64).reshape(-1)
        box = None if data.get("box") is None else np.asarray(data["box"], dtype=np.float64).reshape(4)
    except (TypeError, ValueError) as err:
        raise ProcessDataError(f"{where}: malformed prompt ({err}).") from err
    if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
        raise ProcessDataError(f"{where}: 'labels' needs one 1 (on the object) or 0 (off it) per point.")
    corners = points if box is None else np.concatenate([points, box.reshape(2, 2)])
    outside = ~((corners[:, 0] >= 0) & (corners[:, 0] <= width) & (corners[:, 1] >= 0) & (corners[:, 1] <= height))
    if outside.any():
        raise ProcessDataError(
            f"{where}: position {corners[outside][0].tolist()} lies outside the {width}x{height} frame "
            f"(x in 0..{width}, y in 0..{height}, input-frame pixels)."
        )
    if box is not None and not (box[2] > box[0] and box[3] > box[1]):
        raise ProcessDataError(f"{where}: box {box.tolist()} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0.")
    return Prompt(points=points * frames.scale, labels=labels, box=None if box is None else box * frames.scale)


def parse_prompts(text: str, frames: Frames) -> List[ObjectPrompts]:
    """Object prompts from ``--sam-prompts`` (a JSON file or inline JSON); see docs/process-data.md."""
    data = _load_prompt_json(text)
    objects = []
    for i, item in enumerate(data["objects"]):
        where = f"--sam-prompts objects[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ProcessDataError(f"{where}: needs a non-empty 'name'.")
        where = f"--sam-prompts object '{item['name']}'"
        if item["name"] == BACKGROUND_NAME or item["name"] in [o.name for o in objects]:
            raise ProcessDataError(f"{where}: names must be unique and not '{BACKGROUND_NAME}' (object 0).")
        if not isinstance(item.get("frames"), dict) or not item["frames"]:
            raise ProcessDataError(f'{where}: needs "frames": {{"<frame index>": {{prompt}}}} with at least one frame.')
        prompts = {}
        for key, value in item["frames"].items():
            if not str(key).isdigit() or int(key) >= frames.num_frames:
                raise ProcessDataError(
                    f"{where}: frame {key!r} is not a frame index in 0..{frames.num_frames - 1} (processed frames)."
                )
            prompts[int(key)] = _prompt(f"{where}, frame {key}", value, frames)
        objects.append(ObjectPrompts(name=item["name"], frames=prompts))
    return objects


# ----------------------------------------------------------------------------------------- propagation


CARRIED_POINTS = 3
"""Points taken from a carried mask (its most interior ones) to prompt the next frame."""
MIN_AREA = 4
"""A carried mask smaller than this (pixels) means the object has left; re-prompt where it returns."""


def interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """[<=count, 2] (x, y) pixel centres deep inside ``mask``, spread out (farthest-point style)."""
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    rows, cols = np.nonzero(distance)
    if rows.size == 0:
        return np.zeros((0, 2))
    depth = distance[rows, cols]
    chosen = [int(np.argmax(depth))]
    spread = np.full(rows.size, np.inf)
    for _ in range(count - 1):
        last = chosen[-1]
        spread = np.minimum(spread, np.hypot(rows - rows[last], cols - cols[last]))
        score = depth * spread
        if score.max() <= 0:
            break
        chosen.append(int(np.argmax(score)))
    return np.stack([cols[chosen], rows[chosen]], axis=1) + 0.5


def prompt_from_mask(mask: np.ndarray, count: int) -> Prompt:
    """A prompt standing in for a carried mask: its bounding box and its most interior points."""
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
    points = interior_points(mask, count)
    return Prompt(points=points, labels=np.ones(len(points), dtype=np.int64), box=box)


def _predict(predictor, prompt: Prompt, carried: Optional[np.ndarray]) -> np.ndarray:
    """[H, W] logits of SAM's mask for ``prompt``; with a carried mask, the candidate overlapping it best."""
    logits, scores, _ = predictor.predict(
        point_coords=prompt.points if len(prompt.points) else None,
        point_labels=prompt.labels if len(prompt.points) else None,
        box=prompt.box,
        multimask_output=True,
        return_logits=True,
    )
    if carried is None:
        return logits[int(np.argmax(scores))]
    masks = logits > 0
    union = (masks | carried).sum(axis=(1, 2))
    overlap = (masks & carried).sum(axis=(1, 2)) / np.maximum(union, 1)
    return logits[int(np.argmax(overlap))]


def segment_video(predictor, frames: Frames, objects: List[ObjectPrompts], flow: VideoFlow) -> np.ndarray:
    """[F, H, W] labels (0 background, k object k = ``objects[k - 1]``) from prompts and flow propagation."""
    num_frames, (width, height) = frames.num_frames, frames.size
    labels = np.zeros((num_frames, height, width), dtype=np.int64)
    with progress_bar("Segmenting (SAM)", num_frames) as advance:
        for v in range(num_frames):
            carried = None if v == 0 else warp_labels(labels[v - 1], flow.backward[v - 1], fill=0)
            logits = np.full((len(objects) + 1, height, width), -np.inf, dtype=np.float32)
            logits[0] = 0.0  # the background wins wherever no object's logit is positive
            needs_image = True
            for k, obj in enumerate(objects, start=1):
                previous = None if carried is None else carried == k
                if v in obj.frames:
                    prompt, previous = obj.frames[v], None
                elif previous is not None and previous.sum() >= MIN_AREA:
                    prompt = prompt_from_mask(previous, CARRIED_POINTS)
                else:
                    continue
                if needs_image:
                    predictor.set_image(frames.images[v])
                    needs_image = False
                logits[k] = _predict(predictor, prompt, previous)
            labels[v] = np.argmax(logits, axis=0)
            advance()
    return labels


def sam_masks(
    frames: Frames, flow: VideoFlow, checkpoint: Optional[Path], prompts: Optional[str], device: str = "cpu"
) -> Tuple[np.ndarray, List[str], str]:
    """Labels [F, H, W], object names (background first) and the model's name, from the ``--sam-*`` options."""
    from segment_anything import SamPredictor

    if prompts is None:
        raise ProcessDataError(
            "--sam-checkpoint needs --sam-prompts: points or a box per object on the first frame, e.g. "
            '\'{"objects": [{"name": "car", "frames": {"0": {"box": [10, 20, 60, 50]}}}]}\' (see docs/process-data.md).'
        )
    objects = parse_prompts(prompts, frames)  # before loading a large model: bad prompts fail fast
    model, architecture = load_sam(checkpoint, device)
    labels = segment_video(SamPredictor(model), frames, objects, flow)
    return labels, [BACKGROUND_NAME, *(o.name for o in objects)], architecture.name
