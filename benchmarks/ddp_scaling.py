"""Training on 1 and 2 processes: DistributedDataParallel against a per-tensor all-reduce.

The engine trains on several processes when ``torchrun`` starts it: the trained modules'
gradients are averaged by ``DistributedDataParallel`` (buckets of gradients, each bucket's
all-reduce started while the backward pass is still running). Before, the engine averaged
them itself, one ``all_reduce`` per gradient tensor after the whole backward pass; the engine
keeps that as ``Trainer(gradient_sync="per_tensor")`` for this comparison.

Each configuration trains the same stage with the same global batch through the engine
(``train_ldm`` / ``train_autoencoder`` / ``train_sr``), in fresh processes (gloo on CPU; nccl
when ``--device cuda`` and there are 2 GPUs), ``--warmup`` steps then ``--steps`` timed steps
(the engine's clock, from its log); images per second = global batch x timed steps / seconds.
Rows: 1 process with 1 thread, 1 process with 2 threads (what one process does with the
same cores), 2 processes x 1 thread with the per-tensor all-reduce, and with DDP. Rounds run
one after the other, ``--rounds`` times in turn; medians. Prints a table and a JSON line
(``ddp_over_per_tensor``: DDP's images/s over the per-tensor all-reduce's; ``--json-out``
writes it to a file too). Run it with nothing else on the cores::

    python benchmarks/ddp_scaling.py --stage ldm --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGES = ("ldm", "autoencoder", "sr")


def _config(stage: str, preset: str, batch_size: int, steps: int, limit: int, device: str):
    from ldm_mini.configs import apply_overrides, load_preset

    sets = {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.log_every": 1,
        "train.sample_every": 10**9,
        "train.checkpoint_every": 10**9,
        "train.device": device,
        "data.limit": limit,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    return apply_overrides(load_preset(stage, preset), overrides)


def _run(rank: int, world_size: int, init_file: str, job: dict) -> None:
    import torch.distributed as dist

    from ldm_mini.stages.autoencoder import train_autoencoder
    from ldm_mini.stages.ldm import train_ldm
    from ldm_mini.stages.sr import train_sr
    from ldm_mini.train import Trainer

    torch.set_num_threads(job["threads"])
    if world_size > 1:
        backend = "nccl" if job["device"].startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                                world_size=world_size)  # fmt: skip
    original = Trainer.__init__

    def init(self, *args, **kwargs):  # the engine's setting for this row
        original(self, *args, **{**kwargs, "gradient_sync": job["sync"]})

    Trainer.__init__ = init
    train = {"ldm": train_ldm, "autoencoder": train_autoencoder, "sr": train_sr}[job["stage"]]
    try:
        train(job["config"], job["out"], resume=False, progress=False)
    finally:
        Trainer.__init__ = original
        if world_size > 1:
            dist.destroy_process_group()


def measure(job: dict, processes: int, folder: Path, warmup: int) -> float:
    """Images per second of one configuration (fresh processes, the engine's clock)."""
    import torch.multiprocessing as mp

    out = Path(tempfile.mkdtemp(dir=folder))
    job = {**job, "out": str(out / "run")}
    mp.spawn(_run, args=(processes, str(out / "init"), job), nprocs=processes, join=True)
    log = [json.loads(x) for x in (out / "run" / "log.jsonl").read_text().splitlines()]
    seconds = {line["step"]: line["seconds"] for line in log}
    last = max(seconds)
    batch = job["config"]["train"]["batch_size"]
    return batch * (last - warmup) / (seconds[last] - seconds[warmup])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, default="ldm")
    parser.add_argument("--preset", default="cpu", help="the stage's preset (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--limit", type=int, default=2048, help="dataset images (data.limit)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (2 GPUs: nccl)")
    parser.add_argument("--json-out", metavar="FILE")
    args = parser.parse_args(argv)
    if args.batch_size % 2:
        parser.error("--batch-size must be even (2 processes share it)")
    if args.device.startswith("cuda") and torch.cuda.device_count() < 2:
        parser.error("--device cuda needs 2 GPUs here; use --device cpu (gloo)")
    config = _config(args.stage, args.preset, args.batch_size, args.warmup + args.steps,
                     args.limit, args.device)  # fmt: skip
    rows = {  # name: (processes, threads per process, gradient sync)
        "1 process, 1 thread": (1, 1, "ddp"),
        "1 process, 2 threads": (1, 2, "ddp"),
        "2 processes, per-tensor all-reduce": (2, 1, "per_tensor"),
        "2 processes, DistributedDataParallel": (2, 1, "ddp"),
    }
    results: dict[str, list[float]] = {name: [] for name in rows}
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as folder:
        # the first run caches the latents for the others (the LDM stage's cache)
        for round_number in range(args.rounds):
            for name, (processes, threads, sync) in rows.items():
                job = {"stage": args.stage, "config": config, "threads": threads,
                       "sync": sync, "device": args.device}  # fmt: skip
                start = time.perf_counter()
                rate = measure(job, processes, Path(folder), args.warmup)
                results[name].append(rate)
                print(f"round {round_number + 1}: {name}: {rate:.1f} images/s "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)  # fmt: skip
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    base = medians["1 process, 1 thread"]
    print(f"\n{args.stage} ({args.preset} preset), global batch {args.batch_size}, {args.steps} "
          f"timed steps, median of {args.rounds} rounds, device {args.device}")  # fmt: skip
    print(f"{'':40s} {'images/s':>9s} {'x 1 process, 1 thread':>22s}")
    for name, rate in medians.items():
        print(f"{name:40s} {rate:9.1f} {rate / base:22.2f}")
    ddp = medians["2 processes, DistributedDataParallel"]
    per_tensor = medians["2 processes, per-tensor all-reduce"]
    record = {
        "benchmark": "ddp_scaling",
        "stage": args.stage,
        "preset": args.preset,
        "global_batch": args.batch_size,
        "timed_steps": args.steps,
        "rounds": args.rounds,
        "device": args.device,
        "images_per_second": {name: round(rate, 2) for name, rate in medians.items()},
        "all_rounds": {name: [round(r, 2) for r in rates] for name, rates in results.items()},
        "ddp_over_per_tensor": round(ddp / per_tensor, 3),
        "two_processes_over_one": round(ddp / base, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    line = json.dumps(record)
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
