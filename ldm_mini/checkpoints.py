"""Checkpoints: one folder format for every stage of the course.

A checkpoint is a folder::

    config.json          stage, model config, data, perceptual backbone, step, library
                         version, and the sha256 of every other file
    model.safetensors    the model's weights (what inference needs)
    ema.safetensors      EMA weights (stages that keep them)
    trainer_state.pt     optimizers, discriminator, grad scaler, RNG states: only to resume;
                         tensors and plain containers, read with torch.load(weights_only=True)

It is written atomically: into a temporary sibling folder, then renamed into place, so an
interrupted save leaves the previous checkpoint intact. Loading executes no code and checks
every file against its sha256, so a truncated or corrupted file is named, not half-read.
Taught in notebook 01_perceptual_autoencoder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldm_mini import __version__

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
TRAINER_NAME = "trainer_state.pt"
# what save_checkpoint adds to a stage's config
ADDED_FIELDS = (
    "stage", "step", "format_version", "library_version", "saved_at", "weights_dtype", "files"
)  # fmt: skip


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, damaged, or of another stage."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its config and state dicts (on CPU)."""

    path: Path
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    trainer_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def stage(self) -> str:
        return self.config["stage"]

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))


def _sha256(path: Path) -> str:
    from ldm_mini.data.bundled import sha256_file

    return sha256_file(path)


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    directory: str | Path,
    *,
    stage: str,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    trainer_state: dict[str, Any] | None = None,
    step: int = 0,
    half: bool = False,
) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    ``config`` is the stage's JSON-serialisable description (model config, data, ...);
    ``stage``, ``step``, the format and library versions and the files' sha256 are added.
    ``half`` stores floating-point weights as float16 (half the size, for shipped checkpoints;
    recorded as ``weights_dtype``, and :func:`load_checkpoint` returns them as float32).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        files = {MODEL_NAME: model_state}
        if ema_state is not None:
            files[EMA_NAME] = ema_state
        for name, state in files.items():
            state = _plain_state(state)
            if half:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(tmp / name), metadata={"stage": stage})
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_NAME)
        full_config = {
            "stage": stage,
            "step": int(step),
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **config,
            **({"weights_dtype": "float16"} if half else {}),
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(full_config, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Replace ``directory`` by ``tmp`` with renames only (each rename is atomic)."""
    if directory.exists():
        old = directory.parent / f".{directory.name}.old-{os.getpid()}-{time.time_ns()}"
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(directory)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.NAME.tmp-*`` folders that a save killed before its renames left beside
    ``directory`` (the checkpoint they were writing never became the checkpoint, so nothing in
    them is needed); returns the folders removed. Call it when a run starts, before anything
    writes there."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    stale = sorted(p for p in directory.parent.glob(f".{directory.name}.tmp-*") if p.is_dir())
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def recover_interrupted_save(directory: str | Path) -> bool:
    """Put back the previous checkpoint if a save was killed between its two renames.

    :func:`save_checkpoint` moves the old folder aside (``.NAME.old-*``) and then renames the
    new one into place. A process killed between the two leaves no ``NAME`` but a complete
    old folder; this renames the newest such folder back. Returns True if it did.
    """
    directory = Path(directory)
    if (directory / CONFIG_NAME).is_file() or not directory.parent.is_dir():
        return False
    olds = sorted(
        (
            p
            for p in directory.parent.glob(f".{directory.name}.old-*")
            if (p / CONFIG_NAME).is_file()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if not olds or directory.exists():
        return False
    olds[-1].rename(directory)
    return True


SHIPPED_PREFIX = "shipped:"
DIFFUSION_STAGES = ("ldm", "sr", "inpaint")  # the stages with a U-Net on a first stage
HUB_PREFIX = "hf:"


def shipped_checkpoint_names() -> list[str]:
    """The names of the shipped checkpoints (``shipped:NAME``), sorted."""
    from ldm_mini.data.bundled import data_dir

    folder = data_dir() / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CONFIG_NAME).is_file())


def shipped_checkpoint_dir(name: str) -> Path:
    """The folder of the shipped checkpoint ``name`` (``data/checkpoints/NAME``), or a clear
    error listing the shipped ones."""
    from ldm_mini.data.bundled import data_dir

    path = data_dir() / "checkpoints" / name
    if not name or not path.is_dir():
        raise CheckpointError(
            f"no shipped checkpoint {name!r}; shipped: {shipped_checkpoint_names()}"
        )
    return path


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder, a training run folder holding one in ``checkpoint/``,
    ``shipped:NAME`` for ``data/checkpoints/NAME``, or ``hf:org/name[@revision]`` for a
    model repository on the Hugging Face Hub (downloaded into the Hugging Face cache by
    :func:`ldm_mini.hub_models.hub_checkpoint_dir`).

    A save that was killed half-way is repaired first (:func:`recover_interrupted_save`).
    """
    if isinstance(path, str) and path.startswith(SHIPPED_PREFIX):
        return shipped_checkpoint_dir(path[len(SHIPPED_PREFIX) :])
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        from ldm_mini.hub_models import hub_checkpoint_dir

        return hub_checkpoint_dir(path)
    path = Path(path).expanduser()
    recover_interrupted_save(path)
    recover_interrupted_save(path / "checkpoint")
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "checkpoint" / CONFIG_NAME).is_file():
        return path / "checkpoint"
    if not path.exists():
        raise CheckpointError(f"Checkpoint folder {path} does not exist.")
    raise CheckpointError(
        f"{path} is not a checkpoint: it has no {CONFIG_NAME} (nor checkpoint/{CONFIG_NAME}). "
        "Pass the folder a training run wrote with --out, or a shipped one in data/checkpoints/."
    )


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (no weights are read)."""
    directory = resolve_checkpoint_dir(path)
    try:
        config = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} is unreadable ({err}); the checkpoint is damaged: "
            "retrain it, or restore it from where you got it."
        ) from err
    if not isinstance(config, dict) or "stage" not in config:
        raise CheckpointError(f"{directory / CONFIG_NAME} is not an ldm-mini checkpoint config.")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer ldm-mini (format {config['format_version']}); "
            "upgrade ldm-mini to read it."
        )
    return config


def load_checkpoint(
    path: str | Path, expected_stage: str | None = None, with_trainer_state: bool = False
) -> Checkpoint:
    """Load and verify a checkpoint folder (weights on CPU).

    Raises :class:`CheckpointError` naming the problem: no such folder, a config that does
    not parse, a checkpoint of another stage than ``expected_stage``, a file whose sha256
    differs from the config's (corrupted or truncated), or a missing file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = resolve_checkpoint_dir(path)
    config = read_checkpoint_config(directory)
    if expected_stage is not None and config["stage"] != expected_stage:
        raise CheckpointError(
            f"{directory} holds a '{config['stage']}' checkpoint, but a '{expected_stage}' "
            "checkpoint is needed here."
        )
    files: dict[str, str] = config.get("files", {})
    wanted = [MODEL_NAME] + [n for n in (EMA_NAME,) if n in files]
    if with_trainer_state:
        if TRAINER_NAME not in files:
            raise CheckpointError(
                f"{directory} has no {TRAINER_NAME}, so it cannot be resumed (shipped checkpoints "
                "keep only the weights). Start a new run instead."
            )
        wanted.append(TRAINER_NAME)
    for name in wanted:
        file = directory / name
        if name not in files:
            raise CheckpointError(f"{directory / CONFIG_NAME} does not list {name}.")
        if not file.is_file():
            raise CheckpointError(f"Checkpoint file {file} is missing.")
        if _sha256(file) != files[name]:
            raise CheckpointError(
                f"Checkpoint file {file} is corrupted or truncated (its sha256 differs from the "
                f"one in {CONFIG_NAME}). Retrain, or restore the folder from where you got it."
            )
    try:
        model_state = load_file(str(directory / MODEL_NAME))
        ema_state = load_file(str(directory / EMA_NAME)) if EMA_NAME in wanted else None
        trainer_state = (
            torch.load(directory / TRAINER_NAME, map_location="cpu", weights_only=True)
            if with_trainer_state
            else None
        )
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{directory / TRAINER_NAME} holds more than tensors (code, or a damaged file), so it "
            "was not loaded; start the run over with --no-resume, or delete that file and "
            "resume from the weights with --init-from"
        ) from err
    except (SafetensorError, RuntimeError, OSError, EOFError) as err:
        raise CheckpointError(f"Cannot read the checkpoint in {directory}: {err}") from err
    if config.get("weights_dtype") == "float16":  # stored in half (shipped): compute in float32
        model_state = _as_float32(model_state)
        ema_state = None if ema_state is None else _as_float32(ema_state)
    return Checkpoint(directory, config, model_state, ema_state, trainer_state)


def _as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def weights_sha256s(config: dict[str, Any]) -> set[str]:
    """The sha256s that name this checkpoint's weights: its model file's, and for weights
    re-stored in half by :func:`store_in_half`, the file's they were rounded from (runs that
    refer to the older file by sha256 keep loading)."""
    return {config["files"][MODEL_NAME], *config.get("stored_from_sha256", [])}


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config without the fields :func:`save_checkpoint` adds (to save again)."""
    return {k: v for k, v in config.items() if k not in ADDED_FIELDS}


def store_in_half(path: str | Path) -> Path:
    """Rewrite a checkpoint without trainer state with its weights in float16 (shipped
    checkpoints: half the size); its config keeps the sha256 of the weights it replaces, and
    the folder's other files (card, figures) stay."""
    checkpoint = load_checkpoint(path)
    if TRAINER_NAME in checkpoint.config.get("files", {}):
        raise CheckpointError(f"{path} can be resumed; store only exported checkpoints in half")
    if checkpoint.config.get("weights_dtype") == "float16":
        return checkpoint.path
    directory = checkpoint.path
    staged = directory.parent / f".{directory.name}.half-{os.getpid()}-{time.time_ns()}"
    try:
        stored_from = {"stored_from_sha256": sorted(weights_sha256s(checkpoint.config))}
        export_checkpoint(directory, staged, stored_from, half=True)
        for other in directory.iterdir():
            if not (staged / other.name).exists():
                copy = shutil.copytree if other.is_dir() else shutil.copy2
                copy(other, staged / other.name)
        _swap_into_place(staged, directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return directory


def export_checkpoint(
    source: str | Path,
    destination: str | Path,
    extra_config: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Copy a checkpoint's weights (and EMA) without its trainer state: what ships.

    ``extra_config`` entries (e.g. measured metrics, the command that trained it) are added
    to ``config.json``; ``half`` stores the weights in float16. The result loads like any
    checkpoint but cannot be resumed.
    """
    checkpoint = load_checkpoint(source)
    return save_checkpoint(
        destination,
        stage=checkpoint.stage,
        config={**saved_config(checkpoint.config), **(extra_config or {})},
        model_state=checkpoint.model_state,
        ema_state=checkpoint.ema_state,
        step=checkpoint.step,
        half=half,
    )


def export_ema_checkpoint(
    source: str | Path, destination: str | Path, extra: dict[str, Any], half: bool = False
) -> Path:
    """Ship a diffusion run (stage ``ldm``, ``sr`` or ``inpaint``): its EMA weights as the
    weights (the U-Net, and the text encoder when trained jointly), the first stage copied
    unless it is a shipped autoencoder (then referenced by sha256), no trainer state; ``extra``
    joins the config; ``half`` stores the weights in float16."""
    checkpoint = load_checkpoint(source)
    if checkpoint.stage not in DIFFUSION_STAGES:
        raise CheckpointError(
            f"{source} is a {checkpoint.stage!r} checkpoint, not one of {DIFFUSION_STAGES}"
        )
    config = saved_config(checkpoint.config)
    if checkpoint.ema_state is None:
        raise CheckpointError(f"{source} has no EMA weights to ship")
    ema = {k: v for k, v in checkpoint.ema_state.items() if not k.startswith("__")}
    if config.get("condition", {}).get("kind") == "text":  # the EMA holds unet. and encoder
        state = dict(ema)
    else:
        state = {f"unet.{k}": v for k, v in ema.items()}
    if not config["first_stage"]["checkpoint"].startswith(SHIPPED_PREFIX):
        state.update(
            {k: v for k, v in checkpoint.model_state.items() if k.startswith("first_stage.")}
        )
    config.update(extra, shipped_weights="ema")
    return save_checkpoint(
        destination,
        stage=checkpoint.stage,
        config=config,
        model_state=state,
        step=checkpoint.step,
        half=half,
    )


def is_decoder_fine_tune_of(autoencoder_config: dict[str, Any], sha256: str | None) -> bool:
    """Whether an autoencoder is a decoder-only fine-tune of the one whose weights have
    ``sha256`` (its ``init`` record names that start and a frozen encoder: the same latents)."""
    init = autoencoder_config.get("init") or {}
    return init.get("trainable") == "decoder" and sha256 in init.get("model_sha256s", [])


def repoint_first_stage(
    source: str | Path,
    autoencoder: str,
    destination: str | Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Copy the diffusion checkpoint ``source`` (LDM or SR, first stage by reference) to
    ``destination``, referring to ``autoencoder`` instead: a decoder-only fine-tune
    (``init.trainable = "decoder"``) of the autoencoder it was trained on, so its latents are
    the same and only the decoding changes. Anything else is refused. ``extra`` joins the
    config (e.g. metrics measured with the new decoder)."""
    checkpoint = load_checkpoint(source)
    first = checkpoint.config.get("first_stage") or {}
    if checkpoint.stage not in DIFFUSION_STAGES or first.get("model_sha256") is None:
        raise CheckpointError(f"{source} is not a diffusion checkpoint with an autoencoder")
    if any(k.startswith("first_stage.") for k in checkpoint.model_state):
        raise CheckpointError(f"{source} stores its own first stage; there is nothing to repoint")
    new = load_checkpoint(autoencoder, expected_stage="autoencoder")
    if not is_decoder_fine_tune_of(new.config, first["model_sha256"]):
        raise CheckpointError(
            f"{autoencoder} is not a decoder-only fine-tune of the autoencoder {source} was "
            "trained on (its config's init records another start, or a trained encoder): its "
            "latents may differ; retrain on it instead"
        )
    record = {**first, "checkpoint": autoencoder, "autoencoder": new.config,
              "model_sha256": new.config["files"]["model.safetensors"]}  # fmt: skip
    half = checkpoint.config.get("weights_dtype") == "float16"
    return export_checkpoint(source, destination, {"first_stage": record, **(extra or {})}, half)
