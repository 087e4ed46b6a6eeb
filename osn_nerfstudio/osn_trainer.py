"""nerfstudio's trainer with checkpoints that survive being killed at any moment.

nerfstudio writes ``step-N.ckpt`` in place and resumes from the highest step in ``--load-dir``: a run killed
while writing leaves a truncated newest checkpoint, and resuming then fails. Here a checkpoint is written
beside the folder and moved into it in one rename, and resuming skips (and names) any checkpoint that cannot
be read, falling back to the newest one that can. A resumed run stops at ``max_num_iterations`` in total, where
an uninterrupted run stops (nerfstudio would train that many steps more).

The OSN model's own training state (phase and round follow from the step; scale network weights, its Adam
state, the render and training configurations are in the model's state dict) travels in the checkpoint,
so a resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Type

import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import comms
from nerfstudio.utils.rich_utils import CONSOLE

from osn_nerfstudio import distributed


@dataclass
class OSNTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings; checkpoints are written atomically and resuming skips unreadable ones."""

    _target: Type = field(default_factory=lambda: OSNTrainer)


def checkpoint_step(path: Path) -> Optional[int]:
    """N of a ``step-N.ckpt`` file name, else None."""
    name = path.name
    if not (name.startswith("step-") and name.endswith(".ckpt")):
        return None
    digits = name[len("step-") : -len(".ckpt")]
    return int(digits) if digits.isdigit() else None


def checkpoints_newest_first(directory: Path) -> List[Path]:
    found = [(checkpoint_step(path), path) for path in Path(directory).iterdir()]
    return [path for step, path in sorted((s, p) for s, p in found if s is not None)[::-1]]


def newest_readable_checkpoint(directory: Path) -> int:
    """Step of the newest checkpoint in ``directory`` that loads; unreadable newer ones are reported."""
    for path in checkpoints_newest_first(directory):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated file raises whatever the unpickler meets
            reason = f"{type(error).__name__}: {error}"
            CONSOLE.print(f"[yellow]Skipping unreadable checkpoint {path.name} in {path.parent} ({reason}).")
            continue
        return int(checkpoint_step(path))
    raise FileNotFoundError(f"No readable step-N.ckpt checkpoint in {directory}; start without --load-dir.")


class OSNTrainer(Trainer):
    config: OSNTrainerConfig

    def _load_checkpoint(self) -> None:
        if self.config.load_dir is not None and self.config.load_step is None:
            self.config.load_step = newest_readable_checkpoint(self.config.load_dir)
        super()._load_checkpoint()
        if self.config.load_dir is not None:
            CONSOLE.print(f"Resuming at step {self._start_step} (checkpoint step-{self.config.load_step:09d}.ckpt)")

    def train(self) -> None:
        """Train up to ``max_num_iterations`` steps in total: nerfstudio would run that many more after a resume."""
        total = self.config.max_num_iterations
        if self._start_step >= total:
            CONSOLE.print(f"The run already reached step {self._start_step - 1} of {total}; nothing left to train.")
            return
        self.config.max_num_iterations = total - self._start_step
        try:
            super().train()
        finally:
            self.config.max_num_iterations = total
        if self.world_size > 1:
            distributed.check_processes_agree(self.pipeline.model, "The trained model")
            if comms.is_main_process():
                CONSOLE.print(f"The {self.world_size} training processes hold identical fields and scale networks.")

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written to a temporary file next to the folder and renamed into it (by the main
        process only, when several train together)."""
        if not comms.is_main_process():
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        partial = self.checkpoint_dir.parent / f".{final.name}.partial"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        torch.save(
            {
                "step": step,
                "pipeline": pipeline.state_dict(),
                "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
                "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
            },
            partial,
        )
        os.replace(partial, final)
        if self.config.save_only_latest_checkpoint:
            for path in checkpoints_newest_first(self.checkpoint_dir):
                if path != final:
                    path.unlink()
