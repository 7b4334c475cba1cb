"""Training-step speed of the ldm_mini U-Net against diffusers. Taught alongside ``05_unet``.

Compares the throughput of one training step (forward, MSE loss, backward, Adam step) of the
course U-Net with diffusers' ``UNet2DModel`` (32x32 pixel config, 3 channels, no context) and
``UNet2DConditionModel`` (8x8 latent config, 8 channels, context (B, 8, 64)) at matched
configurations: parameter counts within 5% (asserted), FLOPs per step counted with
``torch.utils.flop_counter.FlopCounterMode`` (forward + backward). After a warm-up the models
run interleaved in one process (ours, theirs, ours, theirs, ...) together with a 1024x1024 fp32
matmul that gives the device's peak; medians of the rounds are reported. Prints a table and a
final JSON line. It asserts nothing about timings.

Needs the ``bench`` extra (``pip install -e .[bench]``). Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/unet_vs_diffusers.py --repeats 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ldm_mini.unet import UNet, UNetConfig

PARAM_TOLERANCE = 0.05
MATMUL_SIZE = 1024
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class Pair:
    """One matched comparison: our U-Net, diffusers' U-Net and how to call each on a batch."""

    name: str
    ours: nn.Module
    theirs: nn.Module
    # make_batch(batch_size, device) -> (x_t, t, context or None)
    make_batch: Callable[[int, torch.device], tuple[Tensor, Tensor, Tensor | None]]


def _import_diffusers():
    try:
        import diffusers
    except ImportError as error:
        raise SystemExit(
            "diffusers is not installed; install the bench extra: pip install -e '.[bench]'"
        ) from error
    return diffusers


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_pairs() -> list[Pair]:
    """The two matched configurations (widths and blocks chosen so parameters agree within 5%).

    Both diffusers models use ``resnet_time_scale_shift="scale_shift"``, the FiLM of our
    ResBlock (GroupNorm(h) * (1 + scale) + shift). diffusers' ``UNet2DModel`` attention is a
    single attention layer without a feed-forward (the DDPM/ADM attention block), so the pixel
    pair builds ours with ``transformer_feed_forward=False``: the same architecture, widths
    and heads on both sides. The latent pair keeps the GEGLU MLP on both sides (diffusers'
    ``UNet2DConditionModel`` transformer has one too).
    """
    diffusers = _import_diffusers()

    def pixel_batch(batch: int, device: torch.device):
        x = torch.randn(batch, 3, 32, 32, device=device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), device=device)
        return x, t, None

    ours_pixel = UNet(
        UNetConfig(
            in_channels=3,
            out_channels=3,
            base_channels=64,
            channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_levels=(1,),
            heads=4,
            transformer_feed_forward=False,
        )
    )
    theirs_pixel = diffusers.UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        resnet_time_scale_shift="scale_shift",
    )

    def latent_batch(batch: int, device: torch.device):
        z = torch.randn(batch, 8, 8, 8, device=device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), device=device)
        # tau_theta(y): (B, M = 8 tokens, 64)
        context = torch.randn(batch, 8, 64, device=device)
        return z, t, context

    ours_latent = UNet(
        UNetConfig(
            in_channels=8,
            out_channels=8,
            base_channels=64,
            channel_mult=(1, 2),
            num_res_blocks=2,
            attention_levels=(0, 1),
            heads=4,
            context_dim=64,
        )
    )
    theirs_latent = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=8,
        layers_per_block=2,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        # 4 heads per level, as ours: head width 16 at 64 channels, 32 at 128
        attention_head_dim=(16, 32),
        resnet_time_scale_shift="scale_shift",
    )
    return [
        Pair("pixel32", ours_pixel, theirs_pixel, pixel_batch),
        Pair("latent8_ctx", ours_latent, theirs_latent, latent_batch),
    ]


def check_matched(pair: Pair) -> tuple[int, int]:
    """Assert |params_ours / params_theirs - 1| <= 5%; returns both counts."""
    ours, theirs = count_parameters(pair.ours), count_parameters(pair.theirs)
    relative = abs(ours / theirs - 1.0)
    assert relative <= PARAM_TOLERANCE, (
        f"{pair.name}: parameter counts differ by {relative:.1%} (ours {ours:,}, diffusers "
        f"{theirs:,}), more than {PARAM_TOLERANCE:.0%}; adjust widths or blocks in build_pairs()."
    )
    return ours, theirs


def _predict(model: nn.Module, is_ours: bool, x: Tensor, t: Tensor, context: Tensor | None):
    if is_ours:
        return model(x, t, context=context)
    if context is None:
        return model(x, t).sample
    return model(x, t, encoder_hidden_states=context).sample


def make_step(
    model: nn.Module, is_ours: bool, batch: tuple[Tensor, Tensor, Tensor | None]
) -> Callable[[], None]:
    """One training step: eps-prediction MSE, backward, Adam update (lr 1e-4)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, t, context = batch
    target = torch.randn_like(x)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # L = || eps - eps_theta(x_t, t, y) ||^2
        loss = F.mse_loss(_predict(model, is_ours, x, t, context), target)
        loss.backward()
        optimizer.step()

    return step


def flops_per_step(model: nn.Module, is_ours: bool, batch) -> int:
    """Forward + backward FLOPs of one step (the Adam update is not counted)."""
    x, t, context = batch
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(_predict(model, is_ours, x, t, context), torch.zeros_like(x)).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device, calls: int) -> float:
    """Seconds per call of ``fn``, averaged over ``calls`` back-to-back calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def make_matmul(device: torch.device) -> Callable[[], None]:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)

    def matmul() -> None:
        torch.mm(a, b)

    return matmul


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per model")
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pairs = build_pairs()
    matmul = make_matmul(device)
    # 2 n^3 multiply-adds for an n x n by n x n product
    matmul_flops = 2 * MATMUL_SIZE**3

    results: dict[str, dict] = {}
    rows = []
    for pair in pairs:
        params_ours, params_theirs = check_matched(pair)
        pair.ours.to(device).train()
        pair.theirs.to(device).train()
        batch = pair.make_batch(args.batch_size, device)
        flops_ours = flops_per_step(pair.ours, True, batch)
        flops_theirs = flops_per_step(pair.theirs, False, batch)
        step_ours = make_step(pair.ours, True, batch)
        step_theirs = make_step(pair.theirs, False, batch)
        for _ in range(args.warmup):
            step_ours()
            step_theirs()
            matmul()

        times_ours, times_theirs, times_matmul = [], [], []
        for _ in range(args.repeats):
            times_ours.append(time_call(step_ours, device, args.steps))
            times_theirs.append(time_call(step_theirs, device, args.steps))
            times_matmul.append(time_call(matmul, device, 5))
        t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
        peak = matmul_flops / statistics.median(times_matmul) / 1e9
        gflops_ours, gflops_theirs = flops_ours / t_ours / 1e9, flops_theirs / t_theirs / 1e9
        ours_ips, theirs_ips = args.batch_size / t_ours, args.batch_size / t_theirs
        results[pair.name] = {
            "ours_ips": round(ours_ips, 3),
            "theirs_ips": round(theirs_ips, 3),
            "ratio": round(ours_ips / theirs_ips, 4),
            "ours_gflops": round(gflops_ours, 3),
            "theirs_gflops": round(gflops_theirs, 3),
            "matmul_peak_gflops": round(peak, 3),
            "ours_fraction_of_peak": round(gflops_ours / peak, 4),
            "theirs_fraction_of_peak": round(gflops_theirs / peak, 4),
            "params_ours": params_ours,
            "params_theirs": params_theirs,
            "flops_per_step": flops_ours,
            "flops_per_step_theirs": flops_theirs,
        }
        rows.append((pair.name, results[pair.name]))
        pair.ours.cpu()
        pair.theirs.cpu()

    header = (
        f"{'config':<12} {'params ours':>12} {'params diff.':>12} {'GFLOP/step o':>12} "
        f"{'GFLOP/step d':>12} {'img/s ours':>10} {'img/s diff.':>11} {'ratio':>6} "
        f"{'GF/s ours':>9} {'GF/s diff.':>10} {'peak GF/s':>9} {'ours/peak':>9} {'diff./peak':>10}"
    )
    print(
        f"device={args.device} threads={args.threads} batch={args.batch_size} "
        f"repeats={args.repeats} steps/round={args.steps} (medians; ratio = ours / diffusers)"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows:
        print(
            f"{name:<12} {r['params_ours']:>12,} {r['params_theirs']:>12,} "
            f"{r['flops_per_step'] / 1e9:>12.2f} {r['flops_per_step_theirs'] / 1e9:>12.2f} "
            f"{r['ours_ips']:>10.2f} {r['theirs_ips']:>11.2f} {r['ratio']:>6.3f} "
            f"{r['ours_gflops']:>9.1f} {r['theirs_gflops']:>10.1f} "
            f"{r['matmul_peak_gflops']:>9.1f} {r['ours_fraction_of_peak']:>9.1%} "
            f"{r['theirs_fraction_of_peak']:>10.1%}"
        )
    summary = {"device": args.device, "threads": args.threads, "configs": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
