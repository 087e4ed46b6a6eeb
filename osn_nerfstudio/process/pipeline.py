"""osn-process-data end to end: frames -> flow -> masks -> tracks -> per-object SfM -> a validated OSN scene.

Every stage is timed (the summary and ``provenance.stage_seconds`` report it); the scene is built in a
hidden directory beside the output and moved into place only once it is complete and valid, so a
failure never leaves a half-written scene and never touches an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tyro
from rich.table import Table
from rich.text import Text

from osn_nerfstudio import __version__
from osn_nerfstudio.data.scene_format import (
    Frame,
    Keypoints,
    PinholeCamera,
    Scene,
    SceneObject,
    staged_directory,
    write_mask,
    write_rgb,
    write_scene_metadata,
)
from osn_nerfstudio.data.validation import validate_scene
from osn_nerfstudio.process.common import CONSOLE, ProcessDataError, progress_bar
from osn_nerfstudio.process.features import FeatureConfig, extract_features, feature_tracks, merge_tracks
from osn_nerfstudio.process.flow import FlowConfig, VideoFlow, compute_flow
from osn_nerfstudio.process.frames import Frames, FrameSamplingConfig, frame_label, read_frames, select_frames
from osn_nerfstudio.process.masks import check_visible, read_user_masks
from osn_nerfstudio.process.preview import write_preview
from osn_nerfstudio.process.sam import download_advice, sam_masks
from osn_nerfstudio.process.sfm import ObjectBox, SfMConfig, SfMFailure, reconstruct_object, to_object_frame
from osn_nerfstudio.process.silhouettes import (
    SilhouetteConfig,
    measure_silhouettes,
    register_from_silhouettes,
    silhouette_box,
)
from osn_nerfstudio.process.tracks import TrackConfig, Tracks, build_tracks, interior_labels
from osn_nerfstudio.process.trust import (
    TrustConfig,
    half_disagreement,
    silhouette_untrusted_reason,
    trust_signals,
    untrusted_reason,
)

TOOL_NAME = "osn-process-data"
PREVIEW_FILE = "preview.png"
FOCAL_GUESS = 1.2
"""Initial focal length, times the larger image side, when none is given (COLMAP's usual prior)."""


@dataclass
class ProcessDataConfig:
    """Turn a video (or a folder of its frames) into an OSN scene."""

    data: Path
    """Video file, or folder of frames (read in file name order)."""
    output_dir: Path
    """Scene directory to create."""
    overwrite: bool = False
    """Replace ``output_dir`` if it exists (only once the new scene is complete and valid)."""
    sampling: tyro.conf.OmitArgPrefixes[FrameSamplingConfig] = field(default_factory=FrameSamplingConfig)
    """Which frames to keep and at what size."""
    masks: Optional[Path] = None
    """Your instance masks: a folder with one label map per frame (PNG or .npy; 0 background, k object k),
    or a folder with one sub-folder of binary masks per object (named after the object)."""
    object_names: Optional[List[str]] = None
    """Names of objects 1, 2, ... (default: object-1, ... for label maps, the sub-folder names otherwise)."""
    ignore_label: int = 255
    """Mask value meaning "unknown" (no object): it is kept in the scene's masks."""
    sam_checkpoint: Optional[Path] = None
    """segment-anything checkpoint (sam_vit_b/l/h_*.pth; the model type is read from it), used without --masks."""
    sam_prompts: Optional[str] = None
    """SAM prompts per object: a JSON file, or the JSON itself (see docs/process-data.md)."""
    sam_device: str = "cpu"
    """Torch device SAM runs on ("cuda" on a GPU machine)."""
    focal_length: Optional[float] = None
    """Focal length in pixels of the input frames (principal point at the centre). Estimated by the
    background's SfM when not given; give it when known, small or short videos estimate it poorly."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    tracks: TrackConfig = field(default_factory=TrackConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sfm: SfMConfig = field(default_factory=SfMConfig)
    silhouettes: SilhouetteConfig = field(default_factory=SilhouetteConfig)
    """Registration from mask outlines for foreground objects whose SfM fails or is untrusted."""
    trust: TrustConfig = field(default_factory=TrustConfig)
    """When a foreground object's registration is untrusted (left out, or kept with a warning)."""
    box_margin: float = 0.1
    """Each object's box is its points' extent grown by this fraction on every side."""
    preview: bool = True
    """Write preview.png (masks and keypoints of every object on a few frames) into the scene."""


@dataclass
class ObjectReport:
    """What per-object SfM achieved for one object."""

    name: str
    registered_frames: int
    keypoints: int
    reprojection_error: float
    """Mean reprojection error (pixels) of its keypoints."""
    visible_frames: int = 0
    """Frames of the written scene where its mask has pixels."""
    half_disagreement_deg: float = float("nan")
    """How far reconstructions from halves of its tracks are from its own (degrees, median; see trust.py)."""
    failure: Optional[str] = None
    """Why the object was left out of the scene, if it was."""
    unregistered: Dict[str, List[int]] = field(default_factory=dict)
    """Reason -> frames (of the written scene) where the object is not registered."""
    untrusted: Optional[str] = None
    """Why its registration cannot be trusted (an SfM one is left out unless ``--trust.keep-untrusted``; one from
    silhouettes is kept, since the user asked for it)."""
    source: str = "SfM"
    """How it was registered: "SfM" or "silhouettes" (from its mask outlines and tracks)."""
    sfm_problem: Optional[str] = None
    """Registered from silhouettes: why SfM's registration was not used (with ``--silhouettes.prefer`` on an object
    that stayed with SfM: why its silhouettes could not register it)."""
    turn_measured: float = float("nan")
    """Registered from silhouettes: share of its frames whose turn from the previous frame its tracks measured."""
    turn_ambiguity_deg: float = float("nan")
    """Registered from silhouettes: how far apart turns are that its tracks fit about equally well (degrees)."""


@dataclass
class ProcessReport:
    """The outcome of a run, printed as the summary and stored in the scene's provenance."""

    scene: Optional[Scene] = None
    objects: List[ObjectReport] = field(default_factory=list)
    dropped_frames: Dict[str, str] = field(default_factory=dict)
    """Input frame -> why it was left out (the background is not registered there)."""
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    sfm_seconds: Dict[str, float] = field(default_factory=dict)
    """Per-object SfM time."""
    mask_source: str = ""
    camera_source: str = ""


@contextmanager
def _timed(report: ProcessReport, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------------------- stages


def _masks(config: ProcessDataConfig, frames: Frames, flow: VideoFlow) -> Tuple[np.ndarray, List[str], str]:
    """Labels [F, H, W], names (background first) and a description of where they came from."""
    if config.masks is not None:
        if config.sam_checkpoint is not None or config.sam_prompts is not None:
            raise ProcessDataError("give either --masks or --sam-checkpoint/--sam-prompts, not both.")
        labels, names = read_user_masks(config.masks, frames, config.object_names, config.ignore_label)
        return labels, names, f"user masks {config.masks}"
    if config.sam_checkpoint is None and config.sam_prompts is None:
        raise ProcessDataError(f"no instance masks: pass --masks FOLDER, or use segment-anything.\n{download_advice()}")
    if config.object_names is not None:
        raise ProcessDataError("--object-names is for --masks; with SAM, objects are named in --sam-prompts.")
    labels, names, model = sam_masks(frames, flow, config.sam_checkpoint, config.sam_prompts, config.sam_device)
    return labels, names, f"segment-anything {model} ({config.sam_checkpoint})"


def _initial_camera(config: ProcessDataConfig, frames: Frames) -> PinholeCamera:
    width, height = frames.size
    if config.focal_length is not None and not config.focal_length > 0:
        raise ProcessDataError(f"--focal-length must be positive, got {config.focal_length}.")
    focal = FOCAL_GUESS * max(width, height) if config.focal_length is None else config.focal_length * frames.scale
    return PinholeCamera(width=width, height=height, fx=focal, fy=focal, cx=width / 2, cy=height / 2)


def _reconstruct_all(
    tracks: Tracks,
    names: List[str],
    camera: PinholeCamera,
    estimate_intrinsics: bool,
    num_frames: int,
    config: ProcessDataConfig,
    report: ProcessReport,
) -> Tuple[Dict[int, ObjectBox], Dict[int, str], PinholeCamera]:
    """Per-object SfM, background first (it fixes the intrinsics the other objects share)."""
    results: Dict[int, ObjectBox] = {}
    failures: Dict[int, str] = {}
    with progress_bar("Structure from motion", len(names)) as advance:
        for k, name in enumerate(names):
            start = time.perf_counter()
            try:
                own = tracks.observations(tracks.object_id == k)
                sfm = reconstruct_object(own, camera, num_frames, config.sfm, estimate_intrinsics and k == 0)
                if k == 0:
                    camera = sfm.camera
                results[k] = to_object_frame(sfm, margin=config.box_margin)
                results[k].half_disagreement_deg = half_disagreement(
                    own,
                    sfm,
                    partial(reconstruct_object, camera=camera, num_frames=num_frames, config=config.sfm),
                    config.trust.stability_splits,
                    seed=config.sfm.seed,
                )
            except SfMFailure as err:
                failures[k] = str(err)
            report.sfm_seconds[name] = time.perf_counter() - start
            advance()
    if 0 in failures:
        raise ProcessDataError(
            f"the background (object 0 '{names[0]}') could not be reconstructed: {failures[0]}. It needs static, "
            "textured pixels seen over a moving camera: check its masks, keep more frames (--fps, --max-frames), "
            "or give --focal-length."
        )
    return results, failures, camera


def _sfm_untrusted(box: ObjectBox, visible: np.ndarray, kept: np.ndarray, config: ProcessDataConfig) -> Optional[str]:
    """Why a foreground object's SfM cannot be trusted on the ``kept`` frames [F] (it is ``visible`` [F'] there)."""
    sfm = box.sfm
    new_index = np.cumsum(kept) - 1
    kept_sfm = replace(
        sfm,
        registered=sfm.registered[kept],
        keypoint_frame=new_index[sfm.keypoint_frame[kept[sfm.keypoint_frame]]],
    )
    return untrusted_reason(trust_signals(kept_sfm, visible, box.half_disagreement_deg), config.trust)


def _register_from_silhouettes(
    tracks: Tracks, labels: np.ndarray, k: int, camera: PinholeCamera, background: ObjectBox, config: ProcessDataConfig
) -> ObjectBox:
    """Object k registered from its outlines and tracks (``process/silhouettes.py``), judged by ``process/trust.py``."""
    own = tracks.observations(tracks.object_id == k)
    silhouettes = measure_silhouettes(labels, k, config.silhouettes.shrink_tolerance)

    def register(part: Tracks):
        return register_from_silhouettes(part, silhouettes, camera, background.sfm.camera_to_object, config.silhouettes)

    registration = register(own)
    box = silhouette_box(registration, config.silhouettes)
    box.source = "silhouettes"
    frames = registration.sfm.registered
    box.turn_measured = float(registration.turn_measured[frames].mean())
    box.half_disagreement_deg = half_disagreement(
        own, registration.sfm, lambda part: register(part).sfm, config.trust.stability_splits, seed=config.sfm.seed
    )
    box.turn_ambiguity_deg = registration.ambiguity_deg
    box.untrusted = silhouette_untrusted_reason(
        box.turn_measured, box.half_disagreement_deg, box.turn_ambiguity_deg, config.trust
    )
    return box


def _judge_foreground(
    tracks: Tracks,
    labels: np.ndarray,
    names: List[str],
    results: Dict[int, ObjectBox],
    failures: Dict[int, str],
    camera: PinholeCamera,
    config: ProcessDataConfig,
) -> Dict[int, str]:
    """Judge every foreground SfM registration; where SfM failed or is untrusted, register from silhouettes.

    Updates ``results`` and ``failures`` in place; returns, per object registered from silhouettes, why its SfM was
    not used. A silhouette registration is never trusted (``silhouette_untrusted_reason``); the scene keeps it
    because the user asked for it.
    """
    kept = results[0].sfm.registered
    sfm_problems: Dict[int, str] = {}
    for k in range(1, len(names)):
        if k in results:
            results[k].untrusted = _sfm_untrusted(results[k], (labels[kept] == k).any(axis=(1, 2)), kept, config)
    sfm_trusted = {k for k in range(1, len(names)) if k in results and results[k].untrusted is None}
    wanted = [
        k
        for k in range(1, len(names))
        if config.silhouettes.prefer or (config.silhouettes.enabled and k not in sfm_trusted)
    ]
    if not wanted:
        return sfm_problems
    with progress_bar("Registration from silhouettes", len(wanted)) as advance:
        for k in wanted:
            try:
                box = _register_from_silhouettes(tracks, labels, k, camera, results[0], config)
                sfm_problems[k] = failures.pop(k, None) or results[k].untrusted or "not used (--silhouettes.prefer)"
                results[k] = box
            except SfMFailure as err:
                if k in failures:
                    failures[k] += f"; from its silhouettes: {err}"
                elif results[k].untrusted is not None:
                    results[k].untrusted += f"; from its silhouettes: {err}"
                else:  # --silhouettes.prefer on a trusted SfM registration: it stays, and the summary says why
                    sfm_problems[k] = f"kept from SfM: its silhouettes could not register it ({err})"
            advance()
    return sfm_problems


# ----------------------------------------------------------------------------------------- scene assembly


def _frame_failures_by_reason(failures: Dict[int, str], kept: np.ndarray) -> Dict[str, List[int]]:
    """Reason -> frames of the written scene (numbered after dropping frames)."""
    new_index = np.cumsum(kept) - 1
    grouped: Dict[str, List[int]] = {}
    for v, reason in sorted(failures.items()):
        if kept[v]:
            grouped.setdefault(reason, []).append(int(new_index[v]))
    return grouped


def _keypoints(
    box: ObjectBox, k: int, new_index: np.ndarray, kept: np.ndarray, camera: PinholeCamera, scale: float
) -> Keypoints:
    sfm = box.sfm
    u, v = sfm.keypoint_uv[:, 0], sfm.keypoint_uv[:, 1]
    rows = kept[sfm.keypoint_frame] & (u >= 0) & (v >= 0) & (u <= camera.width) & (v <= camera.height)
    error = sfm.keypoint_error[rows]
    return Keypoints(
        object_id=np.full(int(rows.sum()), k, dtype=np.int64),
        frame=new_index[sfm.keypoint_frame[rows]],
        uv=sfm.keypoint_uv[rows],
        depth=sfm.keypoint_depth[rows],
        weight=1.0 / (1.0 + (error / scale) ** 2),
    )


def assemble_scene(
    root: Path,
    frames: Frames,
    labels: np.ndarray,
    names: List[str],
    results: Dict[int, ObjectBox],
    failures: Dict[int, str],
    camera: PinholeCamera,
    config: ProcessDataConfig,
    report: ProcessReport,
    sfm_problems: Optional[Dict[int, str]] = None,
) -> Tuple[Scene, Frames, np.ndarray]:
    """The scene's metadata, the kept frames and their labels.

    Frames where the background is not registered are dropped (the background must be known in every
    frame); objects without a registered frame, or whose SfM registration is untrusted (``ObjectBox.untrusted``;
    kept with ``--trust.keep-untrusted``), are dropped and their pixels become unknown. Registrations from
    silhouettes are kept, flagged. ``sfm_problems`` says, per object registered from silhouettes, why its SfM was
    not used.
    """
    sfm_problems = sfm_problems or {}
    kept = results[0].sfm.registered.copy()
    for v in np.flatnonzero(~kept):
        report.dropped_frames[frame_label(frames, int(v))] = results[0].sfm.frame_failures.get(int(v), "not registered")
    if kept.sum() < 2:
        raise ProcessDataError(f"the background was registered in only {int(kept.sum())} frame(s); a scene needs 2.")
    new_index = np.cumsum(kept) - 1
    objects, poses, registered, keypoints = [], [], [], []
    labels = labels[kept].copy()
    relabelled = np.where(labels == config.ignore_label, config.ignore_label, 0)
    for k, name in enumerate(names):
        box = results.get(k)
        reason = failures.get(k)
        part, untrusted = None, None
        visible = (labels == k).any(axis=(1, 2))
        stability = float("nan") if box is None else box.half_disagreement_deg
        if box is not None:
            part = _keypoints(box, len(objects), new_index, kept, camera, config.sfm.weight_error_scale)
            if len(part) == 0:
                reason = "registered only in frames that were dropped, or no keypoint inside the image"
            elif k > 0:  # the background is needed in every frame; its unregistered frames are dropped instead
                untrusted = box.untrusted
                asked = config.trust.keep_untrusted or box.source == "silhouettes"  # --silhouettes.* asked for it
                if untrusted is not None and not asked:
                    reason = untrusted
        if reason is not None or part is None:
            report.objects.append(
                ObjectReport(
                    name,
                    0,
                    0,
                    float("nan"),
                    int(visible.sum()),
                    stability,
                    reason,
                    untrusted=untrusted,
                    source="-" if box is None else box.source,
                    sfm_problem=sfm_problems.get(k),
                )
            )
            relabelled[labels == k] = config.ignore_label
            continue
        relabelled[labels == k] = len(objects)
        objects.append(SceneObject(name, box.bbox_min, box.bbox_max))
        poses.append(box.sfm.camera_to_object[kept])
        registered.append(box.sfm.registered[kept])
        keypoints.append(part)
        report.objects.append(
            ObjectReport(
                name,
                int(registered[-1].sum()),
                len(part),
                float(box.sfm.keypoint_error[kept[box.sfm.keypoint_frame]].mean()),
                int(visible.sum()),
                stability,
                unregistered=_frame_failures_by_reason(box.sfm.frame_failures, kept),
                untrusted=untrusted,
                source=box.source,
                sfm_problem=sfm_problems.get(k),
                turn_measured=box.turn_measured,
                turn_ambiguity_deg=box.turn_ambiguity_deg,
            )
        )
    kept_frames = select_frames(frames, np.flatnonzero(kept))
    scene = Scene(
        root=root,
        camera=camera,
        frames=[
            Frame(image=f"images/{v:05d}.png", mask=f"masks/{v:05d}.png", time=float(t))
            for v, t in enumerate(kept_frames.times)
        ],
        objects=objects,
        camera_to_object=np.stack(poses),
        registered=np.stack(registered),
        keypoints=Keypoints(
            object_id=np.concatenate([p.object_id for p in keypoints]),
            frame=np.concatenate([p.frame for p in keypoints]),
            uv=np.concatenate([p.uv for p in keypoints]),
            depth=np.concatenate([p.depth for p in keypoints]),
            weight=np.concatenate([p.weight for p in keypoints]),
        ),
        mask_ignore_label=config.ignore_label,
    )
    return scene, kept_frames, relabelled


def _settings(config: ProcessDataConfig) -> dict:
    """The run's settings as JSON values (paths as strings)."""
    return json.loads(json.dumps(asdict(config), default=str))


def _provenance(config: ProcessDataConfig, report: ProcessReport) -> dict:
    return {
        "tool": TOOL_NAME,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(config.data),
        "masks": report.mask_source,
        "intrinsics": report.camera_source,
        "settings": _settings(config),
        "objects": [{k: None if v != v else v for k, v in asdict(o).items()} for o in report.objects],  # NaN: null
        "dropped_frames": report.dropped_frames,
        "stage_seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
    }


def write_scene(scene: Scene, frames: Frames, labels: np.ndarray, preview: bool) -> None:
    """Write images, masks, metadata and the preview into ``scene.root``, then validate everything."""
    with progress_bar("Writing the scene", scene.num_frames) as advance:
        for v, frame in enumerate(scene.frames):
            write_rgb(scene.root / frame.image, frames.images[v])
            write_mask(scene.root / frame.mask, labels[v])
            advance()
    write_scene_metadata(scene)
    validate_scene(scene)
    if preview:
        names = [o.name for o in scene.objects]
        write_preview(scene.root / PREVIEW_FILE, frames.images, labels, scene.keypoints, names)


def _build_into(destination: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(root)`` in a staged directory and move the result to ``destination`` when it succeeds."""
    with staged_directory(destination) as root:
        build(root)


def check_output(destination: Path, overwrite: bool) -> None:
    """Refuse an existing ``destination`` unless ``overwrite``."""
    if destination.exists() and not overwrite:
        raise ProcessDataError(
            f"{destination}: already exists; refusing to overwrite it. Choose another --output-dir, or pass "
            "--overwrite to replace it once the new scene is complete."
        )


def publish(destination: Path, overwrite: bool, build: Callable[[Path], None]) -> None:
    """Build a directory with ``build(root)`` and put it at ``destination``.

    An existing ``destination`` is replaced only with ``overwrite``, and only after the build succeeded.
    """
    check_output(destination, overwrite)
    if not destination.exists():
        _build_into(destination, build)
        return
    fresh = destination.parent / f".{destination.name}.new-{uuid.uuid4().hex[:12]}"
    _build_into(fresh, build)
    retired = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(destination, retired)
    os.replace(fresh, destination)
    if retired.is_dir():
        shutil.rmtree(retired)
    else:
        retired.unlink()


# ----------------------------------------------------------------------------------------- entry


def process_video(config: ProcessDataConfig) -> ProcessReport:
    """Run every stage and write the scene to ``config.output_dir``; raise ``ProcessDataError`` on bad input."""
    output = Path(config.output_dir)
    check_output(output, config.overwrite)  # before the slow stages, not after them
    report = ProcessReport()
    with _timed(report, "frames"):
        frames = read_frames(config.data, config.sampling)
    with _timed(report, "flow"):
        flow = compute_flow(frames.images, config.flow)
    with _timed(report, "masks"):
        labels, names, report.mask_source = _masks(config, frames, flow)
    check_visible(labels, names, report.mask_source)
    with _timed(report, "tracks"):
        tracks = build_tracks(frames.images, flow, labels, config.ignore_label, config.flow, config.tracks)
    if config.features.enabled:
        with _timed(report, "features"):
            interiors = [interior_labels(frame, config.tracks.mask_margin, config.ignore_label) for frame in labels]
            features = extract_features(frames.images, interiors, config.features)
            tracks = merge_tracks(tracks, feature_tracks(features, len(names), config.features, flow))
    camera = _initial_camera(config, frames)
    estimate = config.focal_length is None
    with _timed(report, "sfm"):
        results, failures, camera = _reconstruct_all(tracks, names, camera, estimate, frames.num_frames, config, report)
    silhouettes = config.silhouettes.enabled or config.silhouettes.prefer
    with _timed(report, "silhouettes") if silhouettes else nullcontext():
        sfm_problems = _judge_foreground(tracks, labels, names, results, failures, camera, config)
    report.camera_source = (
        f"estimated by the background's SfM: fx = fy = {camera.fx:.2f} px"
        if estimate
        else f"given: fx = fy = {camera.fx:.2f} px"
    )

    def build(root: Path) -> None:
        scene, kept_frames, kept_labels = assemble_scene(
            root, frames, labels, names, results, failures, camera, config, report, sfm_problems
        )
        scene.provenance = _provenance(config, report)
        with _timed(report, "write"):
            write_scene(scene, kept_frames, kept_labels, config.preview)
        report.scene = scene

    publish(output, config.overwrite, build)
    report.scene.root = output
    return report


# ----------------------------------------------------------------------------------------- summary


def _frames_text(frames: List[int]) -> str:
    return ", ".join(map(str, frames[:8])) + (f", ... ({len(frames)} in all)" if len(frames) > 8 else "")


def summary_table(report: ProcessReport) -> Table:
    scene = report.scene
    title = (
        f"{scene.root}: {scene.num_frames} frames at {scene.camera.width}x{scene.camera.height}, "
        f"{scene.num_objects} objects"
    )
    table = Table(title=title, title_justify="left")
    columns = (
        "object",
        "from",
        "registered / visible",
        "keypoints",
        "reproj. error (px)",
        "halves differ (deg)",
        "notes",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("object", "from", "notes") else "right")
    for obj in report.objects:
        stability = "-" if np.isnan(obj.half_disagreement_deg) else f"{obj.half_disagreement_deg:.1f}"
        if obj.failure is not None:
            table.add_row(
                Text(obj.name),
                obj.source,
                f"0/{obj.visible_frames}",
                "-",
                "-",
                stability,
                Text(f"left out: {obj.failure}", style="red"),
            )
            continue
        notes = "; ".join(f"not in frames {_frames_text(f)}: {reason}" for reason, f in obj.unregistered.items())
        if obj.sfm_problem is not None and obj.source == "silhouettes":
            turns = f"turn measured in {100 * obj.turn_measured:.0f} % of its frames"
            notes = f"from its silhouettes ({turns}); SfM: {obj.sfm_problem}" + (f"; {notes}" if notes else "")
        elif obj.sfm_problem is not None:
            notes = obj.sfm_problem + (f"; {notes}" if notes else "")
        if obj.untrusted is not None:
            flag = "--silhouettes" if obj.source == "silhouettes" else "--trust.keep-untrusted"
            notes = f"KEPT ({flag}) BUT {obj.untrusted}" + (f"; {notes}" if notes else "")
        table.add_row(
            Text(obj.name, style="bold red" if obj.untrusted else ""),
            obj.source,
            f"{obj.registered_frames}/{obj.visible_frames}",
            str(obj.keypoints),
            f"{obj.reprojection_error:.2f}",
            stability,
            Text(notes, style="bold red" if obj.untrusted else "yellow" if notes else ""),
        )
    return table


def print_summary(report: ProcessReport) -> None:
    CONSOLE.print(summary_table(report))
    for obj in report.objects:
        if obj.untrusted is not None:
            action = "kept with a warning" if obj.failure is None else "left out; its pixels are unknown in the masks"
            CONSOLE.print(Text(f"WARNING: object '{obj.name}' ({action}): {obj.untrusted}", style="bold red"))
    for frame, reason in report.dropped_frames.items():
        CONSOLE.print(Text(f"dropped {frame}: the background is not registered there ({reason})", style="yellow"))
    CONSOLE.print(Text(f"masks: {report.mask_source}; intrinsics {report.camera_source}"))
    timings = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.stage_seconds.items())
    CONSOLE.print(Text(f"time per stage: {timings}"))
