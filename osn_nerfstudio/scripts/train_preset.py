"""``osn-train PRESET.yaml [ns-train arguments]``: run ``ns-train`` with the arguments a preset lists.

A preset (configs/*.yaml) names the method, its trainer arguments, the dataparser and its arguments.
Arguments given on the command line come after the preset's, so they override them; ``--data`` works as
with ns-train. ``--machine.num-devices N`` with ``--machine.device-type cpu`` trains in N CPU processes (gloo), which
ns-train 1.1.5 cannot start (osn_nerfstudio/distributed.py); on GPUs nerfstudio's own launcher runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import yaml


def _flatten(arguments: Dict[str, object]) -> List[str]:
    return [str(item) for key, value in (arguments or {}).items() for item in (key, value)]


def preset_argv(preset: Path, extra: List[str]) -> List[str]:
    """The ns-train argument list of ``preset`` followed by ``extra`` (which overrides it)."""
    try:
        data = yaml.safe_load(preset.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"{preset}: cannot read preset ({err}).") from err
    if not isinstance(data, dict) or "method" not in data:
        raise SystemExit(f"{preset}: not a preset (expected keys method, trainer, dataparser, dataparser_arguments).")
    argv = [str(data["method"]), *_flatten(data.get("trainer", {})), *extra]
    if data.get("dataparser"):
        argv += [str(data["dataparser"]), *_flatten(data.get("dataparser_arguments", {}))]
    return argv


def entrypoint() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    argv = preset_argv(Path(sys.argv[1]), sys.argv[2:])
    from osn_nerfstudio.console import third_party_imports

    with third_party_imports():
        from nerfstudio.scripts import train

    print("ns-train " + " ".join(argv), file=sys.stderr)
    sys.argv = ["ns-train", *argv]
    from osn_nerfstudio import distributed

    train.launch = distributed.with_cpu_processes(train.launch)  # ns-train's main() calls the module's launch
    train.entrypoint()


if __name__ == "__main__":
    entrypoint()
