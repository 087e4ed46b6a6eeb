"""Method specification of ``osn`` for ``ns-train`` (entry point ``nerfstudio.method_configs``)."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from osn_nerfstudio.data.osn_datamanager import OSNDataManagerConfig
from osn_nerfstudio.osn_model import OSNModelConfig

osn_method = MethodSpecification(
    config=TrainerConfig(
        method_name="osn",
        pipeline=VanillaPipelineConfig(
            datamanager=OSNDataManagerConfig(),
            model=OSNModelConfig(),
        ),
        optimizers={"fields": {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    ),
    description="OSN: every 3D configuration of a multi-object scene consistent with a monocular video.",
)
