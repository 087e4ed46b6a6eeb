"""Pipeline that lets the OSN model see each training batch's labels (the bootstrap renders only them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig


@dataclass
class OSNPipelineConfig(VanillaPipelineConfig):
    """nerfstudio's pipeline, with the model's training forward pass given the batch."""

    _target: Type = field(default_factory=lambda: OSNPipeline)


class OSNPipeline(VanillaPipeline):
    def get_train_loss_dict(self, step: int):
        ray_bundle, batch = self.datamanager.next_train(step)
        model_outputs = self.model.get_training_outputs(ray_bundle, batch)
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch)
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        return model_outputs, loss_dict, metrics_dict
