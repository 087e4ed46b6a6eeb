"""Method specification of ``osn`` for ``ns-train`` (entry point ``nerfstudio.method_configs``)."""

from __future__ import annotations

from nerfstudio.configs.base_config import LocalWriterConfig, LoggingConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from osn_nerfstudio.console import install_warning_filters
from osn_nerfstudio.data.osn_datamanager import OSNDataManagerConfig
from osn_nerfstudio.osn_model import OSNModelConfig
from osn_nerfstudio.osn_pipeline import OSNPipelineConfig
from osn_nerfstudio.osn_trainer import OSNTrainerConfig
from osn_nerfstudio.progress_writer import TrainingProgressWriter

# known nerfstudio deprecation warnings, by message and module (osn_nerfstudio/console.py); not with python -W
install_warning_filters()

osn_method = MethodSpecification(
    config=OSNTrainerConfig(
        method_name="osn",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=1000,
        max_num_iterations=4000,
        mixed_precision=False,
        # nerfstudio's table on a terminal, a plain line now and then in a log file (osn_nerfstudio/progress_writer.py)
        logging=LoggingConfig(local_writer=LocalWriterConfig(_target=TrainingProgressWriter, enable=True)),
        pipeline=OSNPipelineConfig(
            datamanager=OSNDataManagerConfig(train_num_rays_per_batch=1024, eval_num_rays_per_batch=1024),
            model=OSNModelConfig(eval_num_rays_per_chunk=4096),
        ),
        # grids learn best with a larger step than the MLP heads (benchmarks/field_backbones.py)
        optimizers={
            "object_encodings": {"optimizer": AdamOptimizerConfig(lr=5e-2, eps=1e-15), "scheduler": None},
            "object_heads": {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None},
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    ),
    description="OSN: every 3D configuration of a multi-object scene consistent with a monocular video.",
)
