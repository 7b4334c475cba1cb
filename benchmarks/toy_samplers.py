"""Samplers on the 2-D spiral: quality, model calls and wall time, DDIM against DDPM-1000.

The measurement behind notebook ``04_reverse_diffusion``, section 4, as a script. It trains a
:class:`ldm_mini.toy.ToyDenoiser` on :func:`ldm_mini.toy.spiral` with the notebook's loop
(Adam, the simple loss E||eps - eps_theta(x_t, t)||^2, the linear schedule with T = 1000,
seeded), then samples with DDPM (1000 steps) and DDIM (eta = 0) at 10, 20, 50 and 100 steps
for several seeds, and prints, per sampler, the sliced Wasserstein distance to fresh spiral
points, the model calls and the wall time, each also as a ratio to DDPM-1000 measured in the
same process. The distance between two independent draws of the spiral is the floor.

    OMP_NUM_THREADS=1 python benchmarks/toy_samplers.py            # the notebook's full budget
    OMP_NUM_THREADS=1 python benchmarks/toy_samplers.py --steps 200 --seeds 1   # a smoke run

Times depend on the machine and its load; nothing here asserts on them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldm_mini import samplers, toy
from ldm_mini.diffusion import NoiseSchedule

# the notebook's full-mode training budget (section 2)
TRAIN_STEPS = 5000
BATCH_SIZE = 512
LEARNING_RATE = 3e-3
DDIM_STEPS = (10, 20, 50, 100)


class CountingModel(nn.Module):
    """Wraps a model and counts its calls (one call = one batched network evaluation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x_t, t)


def train_toy_denoiser(
    schedule: NoiseSchedule, steps: int, batch_size: int, learning_rate: float, seed: int
) -> tuple[toy.ToyDenoiser, list[float], float]:
    """The notebook's training loop: returns (model in eval mode, losses, seconds)."""
    torch.manual_seed(seed)
    model = toy.ToyDenoiser(num_timesteps=schedule.num_timesteps)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        x0 = toy.spiral(batch_size, generator)
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        x_t = schedule.q_sample(x0, t, noise)
        # L_simple = E || eps - eps_theta(x_t, t) ||^2
        loss = ((noise - model(x_t, t)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return model.eval(), losses, time.perf_counter() - start


def measure(
    name: str,
    run: Callable[[nn.Module, torch.Generator], Tensor],
    model: nn.Module,
    seeds: list[int],
    points: int,
) -> dict[str, float | str]:
    """Distance, calls and seconds of one sampler, averaged over ``seeds``."""
    distances, seconds, calls = [], [], []
    for seed in seeds:
        counting = CountingModel(model)
        start = time.perf_counter()
        sample = run(counting, torch.Generator().manual_seed(seed))
        seconds.append(time.perf_counter() - start)
        calls.append(counting.calls)
        # fresh true points for every seed; fixed projections (generator=None)
        true = toy.spiral(points, torch.Generator().manual_seed(1000 + seed))
        distances.append(toy.sliced_wasserstein(sample, true))
    return {
        "name": name,
        "distance": statistics.mean(distances),
        "distance_sd": statistics.stdev(distances) if len(distances) > 1 else 0.0,
        "calls": statistics.mean(calls),
        "seconds": statistics.mean(seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS, help="training steps")
    parser.add_argument("--seeds", type=int, default=5, help="sampling seeds per sampler")
    parser.add_argument("--points", type=int, default=2000, help="points per sample")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.seeds < 1 or args.points < 2:
        parser.error("--steps and --seeds must be >= 1 and --points >= 2")

    schedule = NoiseSchedule.from_name("linear", num_timesteps=1000)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}"
    )
    model, losses, train_seconds = train_toy_denoiser(
        schedule, args.steps, BATCH_SIZE, LEARNING_RATE, args.seed
    )
    tail = losses[-min(100, len(losses)) :]
    print(
        f"trained ToyDenoiser: {args.steps} steps (batch {BATCH_SIZE}) in {train_seconds:.1f} s, "
        f"loss over the last {len(tail)} steps {statistics.mean(tail):.4f}"
    )
    seeds = list(range(args.seeds))
    shape = (args.points, 2)
    rows = [
        measure(
            "DDPM 1000",
            lambda m, g: (
                samplers.ddpm_sample(m, schedule, shape, generator=g, progress=False).sample
            ),
            model,
            seeds,
            args.points,
        )
    ]
    for steps in DDIM_STEPS:
        rows.append(
            measure(
                f"DDIM {steps}",
                lambda m, g, n=steps: (
                    samplers.ddim_sample(
                        m, schedule, shape, num_steps=n, generator=g, progress=False
                    ).sample
                ),
                model,
                seeds,
                args.points,
            )
        )
    floors = [
        toy.sliced_wasserstein(
            toy.spiral(args.points, torch.Generator().manual_seed(2000 + seed)),
            toy.spiral(args.points, torch.Generator().manual_seed(1000 + seed)),
        )
        for seed in seeds
    ]
    base = rows[0]
    print(
        f"\nsliced Wasserstein-2 to {args.points} fresh spiral points, mean over {len(seeds)} "
        f"seed(s); ratios against DDPM 1000\n"
    )
    header = (
        f"{'sampler':<10} {'distance':>9} {'+-sd':>7} {'calls':>6} {'seconds':>8} "
        f"{'dist ratio':>10} {'calls ratio':>11} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<10} {row['distance']:9.4f} {row['distance_sd']:7.4f} "
            f"{row['calls']:6.0f} {row['seconds']:8.3f} "
            f"{row['distance'] / base['distance']:10.3f} {row['calls'] / base['calls']:11.3f} "
            f"{row['seconds'] / base['seconds']:10.3f}"
        )
    print(f"{'floor':<10} {statistics.mean(floors):9.4f}  (two independent draws of the spiral)")
    ddim50 = next(row for row in rows if row["name"] == "DDIM 50")
    verdict = "holds" if ddim50["distance"] <= 1.1 * base["distance"] else "does NOT hold"
    print(
        f"\nnotebook 04's bar, DDIM 50 within 10% of DDPM 1000: {verdict} "
        f"(ratio {ddim50['distance'] / base['distance']:.3f})"
    )


if __name__ == "__main__":
    main()
