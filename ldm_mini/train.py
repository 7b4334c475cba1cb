"""The one training engine for every stage of the course.

A *stage* (the autoencoder now; the latent diffusion model later) says what its modules
and optimizers are and how to compute each optimizer's loss on a batch. The engine does
everything else the same way for all of them: device choice, mixed precision, learning-rate
warmup, gradient clipping, a progress bar, JSONL logs, periodic sample grids, atomic
checkpoints, and resume that reproduces the uninterrupted run exactly (on the same device).

Reproducibility: the batch of step ``s`` is fixed by ``(seed, s)`` (an epoch-wise random
permutation of the dataset), learning rates are a function of the step, and the torch RNG
state is saved in every checkpoint. So N steps, save, load, N more steps gives the same
weights and losses as 2N steps in one go. Under ``torchrun`` the same loop runs on every
process, with DistributedDataParallel averaging the gradients (:mod:`ldm_mini.distributed`).
Taught in notebook 01_perceptual_autoencoder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm_mini.checkpoints import (
    CheckpointError,
    load_checkpoint,
    recover_interrupted_save,
    remove_stale_temporaries,
    save_checkpoint,
)
from ldm_mini.configs import config_from_dict
from ldm_mini.distributed import (
    DistributedModules,
    StepBatches,
    all_reduce_mean,
    distributed_rank_and_size,
)
from ldm_mini.environment import pick_device

GRADIENT_SYNCS = ("ddp", "per_tensor")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Engine settings shared by every stage."""

    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    precision: str = (
        "auto"  # auto: bf16 on GPUs that have it, fp16 + grad scaler on others, else fp32
    )
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant, or cosine: decay to min_lr_ratio * lr at the end
    min_lr_ratio: float = 0.0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    num_workers: int = 0
    # EMA of the weights of the stage's ema_module() (None: off); sampling uses it by default
    ema_decay: float | None = None
    # a wall-clock budget: stop when the training seconds reach it (None: train all steps);
    # steps stays an upper bound, and a cosine schedule decays over whichever ends first
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None (off) or in (0, 1), got {self.ema_decay}")
        for name in ("log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be None (no budget) or > 0, got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, values, "train")


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good weights were saved."""


class ExponentialMovingAverage:
    """An exponential moving average of a module's floating-point parameters.

    After each optimizer step: theta_ema <- d theta_ema + (1 - d) theta, with the warm-up
    d = min(decay, (1 + n) / (10 + n)) after n updates (as CompVis' LitEma), so early
    averages are not dominated by the random initialisation. Buffers are copied as they are.
    ``state_dict()`` holds the averaged tensors under the module's own names (it loads into
    the module with ``load_state_dict``) plus ``__ema_updates__``, the update count.
    """

    COUNT_KEY = "__ema_updates__"

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {
            name: value.detach().clone().float() if value.is_floating_point() else value.clone()
            for name, value in module.state_dict().items()
        }

    def current_decay(self) -> float:
        """d = min(decay, (1 + n) / (10 + n)) for the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average toward ``module``'s current weights."""
        decay = self.current_decay()
        parameters = dict(module.named_parameters())
        for name, value in module.state_dict().items():
            shadow = self.shadow[name]
            if name in parameters and value.is_floating_point():
                # theta_ema <- d theta_ema + (1 - d) theta
                shadow.lerp_(value.detach().float().to(shadow.device), 1.0 - decay)
            else:
                shadow.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (module names) and the update count."""
        return {**self.shadow, self.COUNT_KEY: torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`; the names must match the module's."""
        state = dict(state)
        if self.COUNT_KEY not in state:
            raise ValueError(f"not an EMA state: no {self.COUNT_KEY!r} entry")
        self.updates = int(state.pop(self.COUNT_KEY))
        missing, unexpected = (
            sorted(set(self.shadow) - set(state)),
            sorted(set(state) - set(self.shadow)),
        )
        if missing or unexpected:
            raise ValueError(
                f"the EMA state does not fit this module: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}"
            )
        for name, value in state.items():
            self.shadow[name].copy_(value)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights alone (for ``module.load_state_dict``)."""
        return dict(self.shadow)


class TrainingStage:
    """What a stage tells the engine. Subclasses fill in every method."""

    name: str = "stage"

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a resume needs (trainable or not)."""
        raise NotImplementedError

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Modules the stage uses but never trains or saves (e.g. a perceptual backbone): the
        engine only moves them to the training device."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers, in the order they step within one training step."""
        raise NotImplementedError

    def active_optimizers(self, step: int) -> list[str]:
        """Which optimizers step at ``step`` (e.g. no discriminator before it starts)."""
        return list(self.optimizers())

    def loss(
        self, optimizer: str, batch: dict[str, Any], step: int, scratch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss for ``optimizer`` and numbers to log. ``scratch`` is shared by the
        optimizers of one step (e.g. the generator's reconstruction for the discriminator)."""
        raise NotImplementedError

    def after_step(self, batch: dict[str, Any], step: int, scratch: dict[str, Any]) -> None:
        """Hook after all optimizers stepped (e.g. re-seeding dead VQ codes)."""

    @torch.no_grad()
    def sample_images(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Images (N, C, H, W) in [-1, 1] for the periodic grid, or None."""
        return None

    def checkpoint_config(self) -> dict[str, Any]:
        """JSON-serialisable description stored in config.json (model config, data, ...)."""
        raise NotImplementedError

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights inference needs (model.safetensors)."""
        raise NotImplementedError

    def ema_module(self) -> nn.Module | None:
        """The module whose weights the engine averages when ``ema_decay`` is set (None: the
        stage has no EMA). The average is saved as ema.safetensors under its own names."""
        return None


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA GPUs with bf16, fp16 on other CUDA GPUs (T4), fp32 elsewhere."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError(
            "precision fp16 needs a CUDA GPU (it uses a grad scaler); use fp32 or bf16"
        )
    return precision


def batch_indices(step: int, batch_size: int, num_items: int, seed: int) -> tuple[list[int], int]:
    """Dataset indices of the batch of step ``step`` (1-based) and its epoch.

    Step s takes items ``(s - 1) * batch_size ...`` of the concatenation of per-epoch random
    permutations, the permutation of epoch e drawn from seed ``(seed, e)``.
    """
    assert step >= 1, f"steps count from 1, got {step}"
    indices: list[int] = []
    position = (step - 1) * batch_size
    epoch = position // num_items
    while len(indices) < batch_size:
        epoch_now, offset = divmod(position + len(indices), num_items)
        permutation = _permutation(num_items, seed, epoch_now)
        take = min(batch_size - len(indices), num_items - offset)
        indices.extend(permutation[offset : offset + take])
    return indices, epoch


_PERMUTATIONS: dict[tuple[int, int, int], list[int]] = {}


def _permutation(num_items: int, seed: int, epoch: int) -> list[int]:
    key = (num_items, seed, epoch)
    if key not in _PERMUTATIONS:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        _PERMUTATIONS.clear()  # keep one epoch's permutation in memory
        _PERMUTATIONS[key] = torch.randperm(num_items, generator=generator).tolist()
    return _PERMUTATIONS[key]


def _to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


class Trainer:
    """Runs a stage for ``config.steps`` steps, writing into ``out``::

    out/checkpoint/    the latest checkpoint (config.json, model.safetensors, trainer_state.pt)
    out/log.jsonl      one JSON object per logged step
    out/samples/       step_000500.png, ... sample grids
    out/last-good/     only after a NaN/inf loss: the weights before it
    """

    def __init__(
        self,
        stage: TrainingStage,
        dataset: torch.utils.data.Dataset,
        config: TrainConfig,
        out: str | Path,
        resume: bool = True,
        progress: bool = True,
        gradient_sync: str = "ddp",
    ) -> None:
        """``gradient_sync``: how W > 1 processes average gradients: ``ddp``
        (DistributedDataParallel: buckets, overlapped with the backward pass) or
        ``per_tensor`` (one all-reduce per gradient after it; kept for the benchmark)."""
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.stage, self.dataset, self.config = stage, dataset, config
        self.out = Path(out)
        self.progress = progress
        self.rank, self.world_size = distributed_rank_and_size()
        if gradient_sync not in GRADIENT_SYNCS:
            raise ValueError(f"gradient_sync must be in {GRADIENT_SYNCS}, got {gradient_sync!r}")
        self.gradient_sync = gradient_sync
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                f"number of processes {self.world_size}."
            )
        device = None if config.device == "auto" else config.device
        if device is None and self.world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()}"
        self.device = pick_device(device)
        self.precision = resolve_precision(config.precision, self.device)
        for module in [*stage.modules().values(), *stage.frozen_modules().values()]:
            module.to(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.seconds = 0.0
        self.base_lrs = {
            name: [group["lr"] for group in opt.param_groups]
            for name, opt in stage.optimizers().items()
        }
        self.ema: ExponentialMovingAverage | None = None
        if config.ema_decay is not None:
            ema_module = stage.ema_module()
            if ema_module is None:
                raise ValueError(
                    f"ema_decay is set but the {stage.name} stage has no EMA module; "
                    "set train.ema_decay=null."
                )
            if self.rank == 0:  # the average is kept, sampled and saved by process 0 only
                self.ema = ExponentialMovingAverage(ema_module, config.ema_decay)
        torch.manual_seed(config.seed)
        if self.rank == 0:  # process 0 alone writes in out/; the others wait for it
            recover_interrupted_save(self.out / "checkpoint")
            # a save killed before its renames left a temporary folder: unused
            for name in ("checkpoint", "last-good"):
                remove_stale_temporaries(self.out / name)
        self._barrier()
        if resume and (self.out / "checkpoint" / "config.json").is_file():
            self._resume()

    # -- checkpoints ---------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "seconds": self.seconds,
            "modules": {n: m.state_dict() for n, m in self.stage.modules().items()},
            "optimizers": {n: o.state_dict() for n, o in self.stage.optimizers().items()},
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _config_record(self) -> dict[str, Any]:
        return {
            **self.stage.checkpoint_config(),
            "train": self.config.to_dict(),
            "device": self.device,
            "precision": self.precision,
            "train_seconds": round(self.seconds, 2),
        }

    def save(self, directory: Path | None = None) -> Path:
        """Write the current state as a checkpoint (default ``out/checkpoint``)."""
        return save_checkpoint(
            self.out / "checkpoint" if directory is None else directory,
            stage=self.stage.name,
            config=self._config_record(),
            model_state=self.stage.inference_state(),
            ema_state=None if self.ema is None else self.ema.state_dict(),
            trainer_state=self._trainer_state(),
            step=self.step,
        )

    def _resume(self) -> None:
        checkpoint = load_checkpoint(
            self.out, expected_stage=self.stage.name, with_trainer_state=True
        )
        mine = self.stage.checkpoint_config()
        for key in ("model", "data"):
            if key in mine and checkpoint.config.get(key) != json.loads(json.dumps(mine[key])):
                raise CheckpointError(
                    f"{self.out} holds a run with another {key} configuration "
                    f"({checkpoint.config.get(key)}); use a new --out folder to start a new run."
                )
        state = checkpoint.trainer_state
        for name, module in self.stage.modules().items():
            module.load_state_dict(state["modules"][name])
        if self.config.ema_decay is not None:
            if checkpoint.ema_state is None:
                raise CheckpointError(
                    f"{self.out} was trained without EMA but this run has ema_decay="
                    f"{self.config.ema_decay}; use a new --out folder or the same settings."
                )
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.ema_state)
        for name, optimizer in self.stage.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        if self.rank == 0:
            self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines after ``step`` (written after the checkpoint we resume from)."""
        log = self.out / "log.jsonl"
        if log.is_file():
            lines = [
                ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
            ]
            log.write_text("".join(line + "\n" for line in lines))

    # -- the loop ------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def _set_learning_rates(self, step: int) -> float:
        config = self.config
        # linear warmup: lr_s = lr * min(1, s / warmup_steps)
        factor = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "cosine" and step > config.warmup_steps:
            # cosine decay after warmup: r + (1 - r) * (1 + cos(pi * progress)) / 2
            progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            if config.max_minutes is not None:  # the clock's progress, if it runs out first
                progress = max(progress, self.seconds / (60.0 * config.max_minutes))
            ratio = config.min_lr_ratio
            factor = ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        for name, optimizer in self.stage.optimizers().items():
            for group, base in zip(optimizer.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = base * factor
        return factor

    def _diverged(self, step: int, optimizer: str, value: float) -> None:
        path = self.out / "last-good"
        if self.rank == 0:
            self.save(path)
        raise TrainingDivergedError(
            f"The {optimizer} loss is {value} at step {step}; training stopped. The weights "
            f"before the bad update are saved in {path} (step {self.step}). Try a lower learning "
            "rate, precision fp32, or gradient clipping."
        )

    def _loader(self, first_step: int) -> torch.utils.data.DataLoader:
        config, num_items = self.config, len(self.dataset)

        def batch_of_step(step: int) -> list[int]:
            return batch_indices(step, config.batch_size, num_items, config.seed)[0]

        sampler = StepBatches(first_step, config.steps, batch_of_step, self.rank, self.world_size)
        # the loader draws its workers' base seed from its own generator, not the global RNG,
        # so a resumed run's global RNG stream (dropout, posterior samples) stays identical
        generator = torch.Generator().manual_seed(self.config.seed + first_step)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.startswith("cuda"),
            generator=generator,
        )

    def _fixed_batch(self) -> dict[str, Any]:
        count = min(len(self.dataset), 16)
        items = [self.dataset[i] for i in range(count)]
        return _to_device(torch.utils.data.default_collate(items), self.device)

    def _write_samples(self, fixed: dict[str, Any]) -> None:
        images = self.stage.sample_images(fixed)
        if images is None:
            return
        from PIL import Image

        from ldm_mini.viz import make_grid

        grid = make_grid(images.float().cpu(), ncols=8)
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(
            folder / f"step_{self.step:06d}.png"
        )

    def out_of_time(self) -> bool:
        """True when ``max_minutes`` is set and the training seconds have reached it."""
        budget = self.config.max_minutes
        return budget is not None and self.seconds >= 60.0 * budget

    def fit(self, callback: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
        """Train from the current step to ``config.steps`` (or until ``max_minutes`` of
        training); returns the last logged values.

        ``callback(trainer)`` runs after every step (e.g. to evaluate during training); its
        time is not counted in ``trainer.seconds``, the training time.
        """
        from tqdm.auto import tqdm

        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.step >= config.steps or self.out_of_time():
            return {"step": self.step, "seconds": self.seconds, "note": "already complete"}
        fixed = self._fixed_batch()
        set_epoch = getattr(self.dataset, "set_epoch", None) if config.num_workers == 0 else None
        main_process = self.rank == 0  # with several processes only rank 0 writes
        # with a clock budget the bar counts training seconds of it (the step count is only an
        # upper bound then), else steps
        budget = None if config.max_minutes is None else round(60.0 * config.max_minutes)
        bar = tqdm(
            total=config.steps if budget is None else budget,
            initial=self.step if budget is None else min(budget, round(self.seconds)),
            desc=f"{self.stage.name} on {self.device}"
            + ("" if budget is None else ", seconds of budget"),
            bar_format=None if budget is None else "{l_bar}{bar}| {n}/{total} s{postfix}",
            disable=not (self.progress and main_process),
        )
        for module in self.stage.modules().values():
            module.train()
        distributed = None
        if self.world_size > 1 and self.gradient_sync == "ddp":
            distributed = DistributedModules(self.stage.modules(), self.device)
        try:
            return self._loop(fixed, set_epoch, main_process, budget, bar, callback)
        finally:
            if distributed is not None:
                distributed.remove()
            bar.close()

    def _loop(self, fixed, set_epoch, main_process, budget, bar, callback) -> dict[str, Any]:
        """The steps of :meth:`fit` (which sets up and tears down around them)."""
        config = self.config
        last: dict[str, Any] = {}
        start = time.perf_counter() - self.seconds
        log_path = self.out / "log.jsonl" if main_process else os.devnull
        with open(log_path, "a", encoding="utf-8") as log:
            for batch in self._loader(self.step + 1):
                step = self.step + 1
                if set_epoch is not None:
                    set_epoch(
                        batch_indices(step, config.batch_size, len(self.dataset), config.seed)[1]
                    )
                values = self._train_step(_to_device(batch, self.device), step)
                self.step = step
                self.seconds = time.perf_counter() - start
                bar.update(1 if budget is None else min(budget, round(self.seconds)) - bar.n)
                # the last step: all steps done, or the clock ran out (every process agrees)
                final = step == config.steps or self._agreed(self.out_of_time())
                if step % config.log_every == 0 or final:
                    last = {"step": step, **values, "seconds": round(self.seconds, 3)}
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    shown = {k: f"{v:.4g}" for k, v in values.items() if "loss" in k}
                    bar.set_postfix(shown if budget is None else {"step": step, **shown})
                if main_process and (step % config.sample_every == 0 or final):
                    self._write_samples(fixed)
                if step % config.checkpoint_every == 0 or final:
                    if main_process:
                        self.save()
                    self._barrier()
                if callback is not None:
                    paused = time.perf_counter()
                    callback(self)
                    for module in self.stage.modules().values():
                        module.train()
                    start += time.perf_counter() - paused  # the callback is not training time
                if final:
                    break
        return last

    def _agreed(self, flag: bool) -> bool:
        """``flag`` on rank 0, the same on every process (the clock differs between them)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(value, 0)
        return bool(value.item())

    def _train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        stage, config = self.stage, self.config
        values: dict[str, float] = {"lr_factor": self._set_learning_rates(step)}
        scratch: dict[str, Any] = {"rank": self.rank, "world_size": self.world_size}
        optimizers = stage.optimizers()
        for name in stage.active_optimizers(step):
            optimizer = optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss, logged = stage.loss(name, batch, step, scratch)
            if not math.isfinite(float(loss.detach())):
                self._diverged(step, name, float(loss.detach()))
            self.scaler.scale(loss).backward()
            if self.world_size > 1 and self.gradient_sync == "per_tensor":
                # the gradient of the global batch's mean loss: the mean of the processes'
                # (with "ddp", DistributedDataParallel has averaged them during backward())
                grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
                all_reduce_mean([grad for grad in grads if grad is not None], self.world_size)
            if config.grad_clip is not None:
                self.scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                logged[f"{name}_grad_norm"] = float(norm)
            self.scaler.step(optimizer)
            values.update(logged)
        self.scaler.update()
        if self.ema is not None:
            module = stage.ema_module()
            assert module is not None
            self.ema.update(module)
        stage.after_step(batch, step, scratch)
        if self.world_size > 1:  # log the global batch's numbers, the same on every process
            keys = sorted(values)
            numbers = torch.tensor(
                [values[k] for k in keys], dtype=torch.float64, device=self.device
            )
            all_reduce_mean([numbers], self.world_size)
            values = dict(zip(keys, numbers.tolist(), strict=True))
        return values

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
