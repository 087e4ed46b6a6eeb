"""Training on several processes (torch.distributed): what the OSN model shares between them, and a CPU launcher.

nerfstudio launches one process per device (``--machine.num-devices``, ``--machine.num-machines``) and wraps the
model in DistributedDataParallel, which averages the fields' gradients. What it does not know about is the OSN
refit: the main process labels validity and fits the scale network, and :func:`broadcast_from_main` hands the result
to the others; training configurations are drawn from per-step seeds, the same on every process.

nerfstudio 1.1.5's distributed worker asserts CUDA before it initialises gloo, so CPU processes are started by
:func:`launch` here (``osn-train PRESET --machine.num-devices 2 --machine.device-type cpu``); on GPUs nerfstudio's own
launcher runs unchanged.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable, Iterable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

DEFAULT_TIMEOUT = timedelta(minutes=30)


def world_size() -> int:
    """Number of processes training together (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def broadcast_from_main(tensors: Iterable[Tensor]) -> None:
    """Overwrite ``tensors`` (parameters or buffers, in place) on every process with the main process's values."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def fingerprints(module: nn.Module) -> Tensor:
    """[T, 2] float64 summary of every parameter and buffer of ``module`` (sum and index-weighted sum): equal on two
    processes iff their tensors agree, up to a vanishing chance."""
    rows = []
    for tensor in [*module.parameters(), *module.buffers()]:
        values = tensor.detach().double().flatten().cpu()
        rows.append(torch.stack([values.sum(), (values * torch.arange(1, len(values) + 1, dtype=torch.float64)).sum()]))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def disagreeing_tensors(module: nn.Module, gathered: List[Tensor]) -> List[str]:
    """Names of the parameters and buffers of ``module`` whose fingerprints differ between processes (``gathered``:
    every process's :func:`fingerprints`)."""
    names = [name for name, _ in module.named_parameters()] + [name for name, _ in module.named_buffers()]
    reference = gathered[0]
    differ = torch.zeros(len(names), dtype=torch.bool)
    for other in gathered[1:]:
        differ |= ~torch.isclose(other, reference, rtol=0.0, atol=0.0, equal_nan=True).all(-1)
    return [name for name, bad in zip(names, differ.tolist()) if bad]


def check_processes_agree(module: nn.Module, what: str) -> None:
    """Raise if any parameter or buffer of ``module`` differs between the processes training together."""
    size = world_size()
    if size == 1:
        return
    mine = fingerprints(module)
    device = next(iter(module.parameters())).device if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = [torch.zeros_like(mine, device=device) for _ in range(size)]
    dist.all_gather(gathered, mine.to(device))
    differ = disagreeing_tensors(module, [g.cpu() for g in gathered])
    if differ:
        raise RuntimeError(f"{what} differs between the {size} training processes: {', '.join(differ[:10])}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_cpu_processes(nerfstudio_launch: Callable) -> Callable:
    """nerfstudio's ``launch`` (``nerfstudio.scripts.train.launch``), extended to several CPU processes, which its
    worker refuses (it asserts CUDA); every other case goes to nerfstudio's launcher unchanged."""

    def launch_any(
        main_func: Callable,
        num_devices_per_machine: int,
        num_machines: int = 1,
        machine_rank: int = 0,
        dist_url: str = "auto",
        config: Any = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        device_type: str = "cuda",
    ) -> None:
        if device_type == "cpu" and num_devices_per_machine * num_machines > 1:
            launch(main_func, num_devices_per_machine, num_machines, machine_rank, dist_url, config, timeout)
        else:
            nerfstudio_launch(
                main_func, num_devices_per_machine, num_machines, machine_rank, dist_url, config, timeout, device_type
            )

    return launch_any


def launch(
    main_func: Callable[[int, int, Any, int], Any],
    num_devices_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    config: Any = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(local_rank, world_size, config, global_rank)`` in ``num_devices_per_machine`` CPU processes of
    this machine, joined over gloo with those of the other machines (nerfstudio's launcher, for CPUs)."""
    size = num_machines * num_devices_per_machine
    if dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--machine.dist-url auto works on one machine only; give tcp://HOST:PORT of machine 0.")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_devices_per_machine,
        args=(main_func, size, num_devices_per_machine, machine_rank, dist_url, config, timeout),
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta,
) -> None:
    """One CPU training process: gloo, this machine's process group for nerfstudio, then ``main_func``; only the
    main process prints."""
    from nerfstudio.utils import comms
    from nerfstudio.utils.rich_utils import CONSOLE

    global_rank = machine_rank * num_devices_per_machine + local_rank
    if "OMP_NUM_THREADS" not in os.environ:  # the processes share this machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_devices_per_machine))
    CONSOLE.quiet = global_rank > 0
    dist.init_process_group("gloo", init_method=dist_url, world_size=size, rank=global_rank, timeout=timeout)
    for machine in range(size // num_devices_per_machine):
        ranks = list(range(machine * num_devices_per_machine, (machine + 1) * num_devices_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    try:
        main_func(local_rank, size, config, global_rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
