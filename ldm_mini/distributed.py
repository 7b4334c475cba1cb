"""Training on several processes: the process group, the data split, DistributedDataParallel.

The engine (:mod:`ldm_mini.train`) trains on one process unless ``torchrun`` (or ``accelerate
launch``, which sets the same environment) started several: then every process joins the
group (:func:`init_distributed_from_env`), takes its share of each global batch
(:class:`StepBatches`), and the trained modules' gradients are averaged by
``torch.nn.parallel.DistributedDataParallel`` (:class:`DistributedModules`): in buckets of
about 25 MB, each bucket's all-reduce started while the backward pass is still computing the
gradients of earlier layers.

Equal to one process. Process r of W takes items r, r + W, r + 2W, ... of each global batch
(the split of ``torch.utils.data.DistributedSampler``, applied to the step's batch, so W
processes see exactly the items one process sees), and every random draw of a step (t, eps,
condition dropout, the posterior's noise) is made for the whole global batch, the same on every
process, which then takes the same positions. So W processes train like one process with the
same global batch, to float tolerance, and a run saved by W processes resumes on any other
number of them. No notebook runs it (a notebook is one process); notebook
01_perceptual_autoencoder builds the engine, and the README's "Several processes, GPUs or
machines" says how to launch it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import torch
from torch import nn


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1 in the environment).

    Backend nccl on CUDA, gloo otherwise; each process uses GPU ``LOCAL_RANK`` when there are
    GPUs. Returns True when a group was joined. Launch e.g.
    ``torchrun --nproc_per_node=2 -m ldm_mini train-ldm ...``.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def all_reduce_mean(tensors: list[torch.Tensor], world_size: int) -> None:
    """Average tensors in place over all processes, one ``all_reduce`` per tensor.

    The engine uses it for logged numbers; for gradients it is what the engine did before
    DistributedDataParallel (``gradient_sync="per_tensor"``, kept for the benchmark): no
    buckets, and nothing starts before the whole backward pass has ended.
    """
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size)


def local_positions(rank: int, world_size: int) -> slice:
    """The positions of process ``rank``'s items in a global batch: r, r + W, r + 2W, ..."""
    return slice(rank, None, world_size)


def gather_global_batch(local: torch.Tensor, world_size: int) -> torch.Tensor:
    """The global batch (B, ...) from every process's share (B / W, ...), in the order one
    process would hold it (the inverse of :func:`local_positions`)."""
    import torch.distributed as dist
    from einops import rearrange

    if world_size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    # global position r + W * i holds item i of process r
    return rearrange(torch.stack(parts), "w i ... -> (i w) ...")


class StepBatches(torch.utils.data.Sampler):
    """Yields the index lists of steps ``first_step .. last_step`` for one process.

    ``batch_of_step(step)`` gives the global batch's dataset indices (fixed by the seed and the
    step); process ``rank`` of ``world_size`` takes its :func:`local_positions` of them.
    """

    def __init__(self, first_step: int, last_step: int, batch_of_step, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        self.steps = range(first_step, last_step + 1)
        self.batch_of_step = batch_of_step
        self.positions = local_positions(rank, world_size)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            yield self.batch_of_step(step)[self.positions]


class _OwnForward(nn.Module):
    """Holds ``module`` and calls its class's forward (not the routed one set on it)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return type(self.module).forward(self.module, *args, **kwargs)


def _route(module: nn.Module, wrapped: nn.Module, *args, **kwargs):
    # through DistributedDataParallel only where a backward pass will follow; a frozen call
    # (a discriminator scoring the generator's images), sampling and evaluation go direct
    if (
        torch.is_grad_enabled()
        and module.training
        and any(p.requires_grad for p in module.parameters())
    ):
        return wrapped(*args, **kwargs)
    return type(module).forward(module, *args, **kwargs)


def _no_buffer_sync() -> dict[str, bool]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    # newer PyTorch names it forward_sync_buffers (broadcast_buffers is deprecated there)
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DistributedModules:
    """Routes every call of the trained modules through DistributedDataParallel.

    A stage calls its modules as on one process (``self.ldm.unet(z_t, t, ...)``); here each
    trained module's ``forward`` is replaced (on the instance, so its parameters, state dict,
    hooks and checkpoints are untouched) by a call of a ``DistributedDataParallel`` holding it.
    The frozen modules (the first stage, the perceptual network) are left alone.
    ``remove()`` restores the modules' own forward.
    """

    def __init__(self, modules: dict[str, nn.Module], device: str) -> None:
        from torch.nn.parallel import DistributedDataParallel

        no_buffer_sync = _no_buffer_sync()

        self.modules = dict(modules)
        self.wrapped: dict[str, nn.Module] = {}
        device_ids = None
        if device.startswith("cuda"):  # "cuda" alone: the GPU this process was given
            index = torch.device(device).index
            device_ids = [torch.cuda.current_device() if index is None else index]
        for name, module in self.modules.items():
            if not any(p.requires_grad for p in module.parameters()):
                continue
            # buffers are the modules' own business (a VQ codebook's usage counts are summed
            # by the stage when it needs them), not copied from process 0 at every call
            wrapped = DistributedDataParallel(
                _OwnForward(module),
                device_ids=device_ids,
                **no_buffer_sync,
            )
            module.forward = functools.partial(_route, module, wrapped)
            self.wrapped[name] = wrapped

    def remove(self) -> None:
        for name in self.wrapped:
            del self.modules[name].forward  # the instance attribute; the class's comes back
        self.wrapped.clear()
