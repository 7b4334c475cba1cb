"""Training on several processes: DistributedDataParallel in the engine, tested with 2 CPU
processes on gloo (ldm_mini.distributed, ldm_mini.train)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from ldm_mini.checkpoints import load_checkpoint
from ldm_mini.configs import apply_overrides, load_preset
from ldm_mini.distributed import StepBatches, local_positions


def _overrides(stage: str, **sets) -> dict:
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    return apply_overrides(load_preset(stage, "tiny"), overrides)


def _train(stage: str, config: dict, out: str, gradient_sync: str = "ddp") -> None:
    from ldm_mini.stages.autoencoder import train_autoencoder
    from ldm_mini.stages.ldm import train_ldm
    from ldm_mini.stages.sr import train_sr
    from ldm_mini.train import Trainer

    train = {"autoencoder": train_autoencoder, "ldm": train_ldm, "sr": train_sr}[stage]
    if gradient_sync == "ddp":
        train(config, out, progress=False)
        return
    original = Trainer.__init__  # the stage functions build the Trainer: pass the setting

    def init(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "gradient_sync": gradient_sync})

    Trainer.__init__ = init
    try:
        train(config, out, progress=False)
    finally:
        Trainer.__init__ = original


def _worker(rank: int, world_size: int, init_file: str, jobs: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)  # fmt: skip
    try:
        for job in jobs:
            job[0](*job[1:])
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, jobs: list, name: str = "init") -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / name), jobs), nprocs=2, join=True)


def _assert_same_run(a: Path, b: Path) -> None:
    one, two = load_checkpoint(a), load_checkpoint(b)
    assert one.step == two.step
    if one.stage == "autoencoder":
        # the tiny autoencoder's GroupNorms have one channel per group, so a conv bias before
        # one has a gradient of exactly 0 in exact arithmetic: float noise (~1e-9) that Adam's
        # first steps turn into +-lr. Compare the function instead: reconstructions of fixed
        # images. Measured after 4 steps: 5.5e-4 apart (1e-5 after one step; the
        # per-tensor all-reduce gives the same); with the adaptive weight computed from each
        # process's half instead of the global batch, 0.39 apart
        from ldm_mini.pipelines import load_autoencoder

        images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            outputs = [load_autoencoder(run)[0](images, sample_posterior=False).reconstruction
                       for run in (a, b)]  # fmt: skip
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=2e-3)
    else:
        # float tolerance: the processes sum the batch's gradient in another order (about
        # 1e-7 apart), which Adam turns into up to ~1e-5 on parameters whose gradient is ~0
        # (the zero-initialised output convs); a real difference moves weights by ~1e-3
        for name, tensor in one.model_state.items():
            torch.testing.assert_close(two.model_state[name], tensor, rtol=1e-4, atol=3e-5)
        assert (one.ema_state is None) == (two.ema_state is None)
        for name, tensor in (one.ema_state or {}).items():
            torch.testing.assert_close(two.ema_state[name], tensor, rtol=1e-4, atol=3e-5)

    def losses(run: Path) -> list[dict[str, float]]:
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if "loss" in k} for line in lines]

    for mine, theirs in zip(losses(a), losses(b), strict=True):
        assert mine == pytest.approx(theirs, rel=1e-3)


CONFIGS = {
    # the adversarial term is on from step 3 (its adaptive weight uses the global batch)
    # (the discriminator's losses from step 3 on are in the log, compared too)
    "autoencoder": {"train.steps": 4, "train.batch_size": 8, "train.log_every": 1,
                    "train.checkpoint_every": 2, "train.sample_every": 100},
    "ldm": {"train.steps": 4, "train.batch_size": 8, "train.log_every": 1,
            "train.checkpoint_every": 2, "train.sample_every": 100,
            "train.lr_schedule": "constant"},
    "sr": {"train.steps": 2, "train.batch_size": 4, "train.log_every": 1,
           "train.checkpoint_every": 2, "train.sample_every": 100},
}  # fmt: skip


def _config(name: str, **sets) -> dict:
    stage = name.removesuffix("_vq")
    if name.endswith("_vq"):
        sets["model.kind"] = "vq"
    return _overrides(stage, **{**CONFIGS[stage], **sets})


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Every 2-process run of this file, in one pair of processes (starting them costs more
    than these tiny runs): a run of each stage; an LDM run of 2 steps (resumed on 1 process in
    a test) and one resuming a 1-process run to step 4; the per-tensor all-reduce; routing."""
    folder = tmp_path_factory.mktemp("two_processes")
    _train("ldm", _config("ldm", **{"train.steps": 2}), str(folder / "one_then_two"))
    jobs: list = [(_check_routing, str(folder))]
    jobs += [(_train, name.removesuffix("_vq"), _config(name), str(folder / name))
             for name in ("autoencoder", "autoencoder_vq", "ldm", "sr")]  # fmt: skip
    jobs += [
        (_train, "ldm", _config("ldm", **{"train.steps": 2}), str(folder / "two_then_one")),
        (_train, "ldm", _config("ldm"), str(folder / "one_then_two")),
        (_train, "ldm", _config("ldm"), str(folder / "per_tensor"), "per_tensor"),
    ]
    _spawn(folder, jobs)
    return folder


@pytest.mark.parametrize("name", ["autoencoder", "autoencoder_vq", "ldm", "sr"])
def test_two_processes_train_like_one_with_the_same_global_batch(
    two_processes: Path, tmp_path: Path, name: str
):
    # autoencoder_vq: codes unused since the last re-seed (every 2 steps) are re-seeded from
    # the global batch's latents, with usage counted over all processes
    stage = name.removesuffix("_vq")
    _train(stage, _config(name), str(tmp_path / "one"))
    _assert_same_run(tmp_path / "one", two_processes / name)
    if name in ("autoencoder", "ldm"):  # the two ways of comparing can fail: another seed
        _train(stage, _config(name, **{"train.seed": 1}), str(tmp_path / "other"))
        with pytest.raises(AssertionError):
            _assert_same_run(tmp_path / "one", tmp_path / "other")


def test_a_run_resumes_on_another_number_of_processes(two_processes: Path, tmp_path: Path):
    _train("ldm", _config("ldm"), str(tmp_path / "straight"))
    # 2 processes for 2 steps, then 1 process to step 4 (and the other way round, in the fixture)
    resumed = tmp_path / "two_then_one"
    shutil.copytree(two_processes / "two_then_one", resumed)
    _train("ldm", _config("ldm"), str(resumed))
    for run in (resumed, two_processes / "one_then_two"):
        _assert_same_run(tmp_path / "straight", run)


def test_ddp_and_the_per_tensor_all_reduce_give_the_same_run(two_processes: Path):
    _assert_same_run(two_processes / "ldm", two_processes / "per_tensor")


def _check_routing(out: str) -> None:
    """On 2 processes: a module's calls go through DistributedDataParallel only while it trains
    with gradients; its gradients are then the mean of both processes'."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ldm_mini.distributed import DistributedModules, gather_global_batch

    rank = dist.get_rank()
    torch.manual_seed(0)
    model, frozen = nn.Linear(3, 2), nn.Linear(2, 1)
    frozen.requires_grad_(False)
    routed = DistributedModules({"model": model, "frozen": frozen}, "cpu")
    assert set(routed.wrapped) == {"model"}
    assert isinstance(routed.wrapped["model"], DistributedDataParallel)
    inputs = torch.arange(12.0).reshape(4, 3)  # the global batch
    mine = inputs[local_positions(rank, 2)]
    frozen(model(mine)).sum().backward()
    grad = model.weight.grad.clone()
    with torch.no_grad():  # sampling: direct, no collective (process 1 does not call it)
        if rank == 0:
            model(mine)
    routed.remove()
    assert "forward" not in vars(model)
    model.weight.grad = None
    frozen(model(inputs)).sum().backward()  # one process, the whole batch: the sum of both
    torch.testing.assert_close(grad, model.weight.grad / 2)
    gathered = gather_global_batch(mine, 2)
    torch.save({"gathered": gathered}, f"{out}/{rank}.pt")


def test_ddp_routes_trained_calls_and_gathers_the_global_batch_in_order(two_processes: Path):
    for rank in (0, 1):  # _check_routing asserted the rest in each process
        result = torch.load(two_processes / f"{rank}.pt", weights_only=True)
        assert torch.equal(result["gathered"], torch.arange(12.0).reshape(4, 3))


def test_processes_split_each_global_batch_as_one_process_sees_it():
    def batch_of_step(step: int) -> list[int]:
        return [10 * step + i for i in range(6)]

    one = list(StepBatches(1, 3, batch_of_step))
    three = [list(StepBatches(1, 3, batch_of_step, rank, 3)) for rank in range(3)]
    for step, batch in enumerate(one):
        parts = [three[rank][step] for rank in range(3)]
        assert all(len(part) == 2 for part in parts)
        assert sorted(sum(parts, [])) == sorted(batch)  # the same items, none twice
        assert parts[1] == batch[1::3]  # rank r: positions r, r + W, ...
