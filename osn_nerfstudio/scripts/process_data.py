"""osn-process-data: turn a video, a folder of frames, or the OSN authors' processed data into an OSN scene.

    osn-process-data video  --data clip.mp4 --output-dir scenes/clip --masks clip-masks/ --focal-length 1400
    osn-process-data images --data frames/  --output-dir scenes/clip --sam-checkpoint sam_vit_b_01ec64.pth \\
        --sam-prompts prompts.json
    osn-process-data authors --data Balloon2/ --output-dir scenes/balloon2

See docs/process-data.md for every stage and option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import tyro
from rich.text import Text
from typing_extensions import Annotated

from osn_nerfstudio.process.authors import ImportAuthors
from osn_nerfstudio.process.common import CONSOLE, ProcessDataError
from osn_nerfstudio.process.pipeline import ProcessDataConfig, print_summary, process_video


@dataclass
class ProcessVideo(ProcessDataConfig):
    """A video file (anything OpenCV decodes) -> an OSN scene."""

    def main(self) -> None:
        if self.data.is_dir():
            raise ProcessDataError(f"{self.data}: is a folder; use `osn-process-data images` for a folder of frames.")
        print_summary(process_video(self))


@dataclass
class ProcessImages(ProcessDataConfig):
    """A folder of video frames (file name order) -> an OSN scene."""

    def main(self) -> None:
        if self.data.exists() and not self.data.is_dir():
            raise ProcessDataError(f"{self.data}: is a file; use `osn-process-data video` for a video file.")
        print_summary(process_video(self))


Commands = Union[
    Annotated[ProcessVideo, tyro.conf.subcommand(name="video")],
    Annotated[ProcessImages, tyro.conf.subcommand(name="images")],
    Annotated[ImportAuthors, tyro.conf.subcommand(name="authors")],
]


def entrypoint() -> None:
    """Console script ``osn-process-data``."""
    tyro.extras.set_accent_color("bright_yellow")
    command = tyro.cli(Commands)
    try:
        command.main()
    except (ProcessDataError, FileExistsError) as err:
        CONSOLE.print(Text(f"osn-process-data: {err}", style="red"), soft_wrap=True)
        raise SystemExit(1) from err


if __name__ == "__main__":
    entrypoint()
