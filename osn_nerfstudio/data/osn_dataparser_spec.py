"""Entry point of the ``osn-data`` dataparser (imports nothing that imports nerfstudio's dataparser registry)."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from osn_nerfstudio.data.osn_dataparser import OSNDataParserConfig

osn_dataparser = DataParserSpecification(
    config=OSNDataParserConfig(),
    description="OSN scene directory (per-object poses, keypoints and instance masks; docs/scene-format.md).",
)
