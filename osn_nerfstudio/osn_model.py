"""The OSN nerfstudio model (not implemented yet: the data pipeline up to the model is)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.models.base_model import Model, ModelConfig


@dataclass
class OSNModelConfig(ModelConfig):
    """OSN model settings."""

    _target: Type = field(default_factory=lambda: OSNModel)


class OSNModel(Model):
    config: OSNModelConfig

    def populate_modules(self):
        raise NotImplementedError(
            "The OSN model is not implemented yet in this version of osn-nerfstudio: the scene was loaded, "
            "validated and batched, but there is nothing to train."
        )
