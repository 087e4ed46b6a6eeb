"""osn-process-data: from a video (or a folder of frames) to an OSN scene.

Stages, one module each: ``frames`` (read and resample the video), ``flow`` (dense optical flow with
forward-backward consistency), ``masks`` (user masks) or ``sam`` (segment-anything prompted on chosen
frames and propagated by the flow), ``tracks`` (flow chained into per-object point tracks), ``sfm``
(per-object structure from motion with pycolmap), ``preview`` and ``pipeline`` (the whole command).
``authors`` imports the OSN authors' processed datasets. Kept free of submodule imports.
"""
