"""Trained checkpoints on the Hugging Face Hub: ``hf:org/name[@revision]``, and a folder ready
to upload.

``hf:org/name`` is accepted everywhere a checkpoint is, because
:func:`ldm_mini.checkpoints.resolve_checkpoint_dir` hands it to :func:`hub_checkpoint_dir`:
``ldm-mini sample --checkpoint hf:org/name``, ``--autoencoder hf:org/name``, the pipelines.
Only the files a checkpoint needs are downloaded (``config.json``, its weights, the card and
its sample grids), into the normal Hugging Face cache; loading then checks them as it checks a
shipped checkpoint (each file's sha256, the stage, the format version). Offline, the Hub is
tried once with a bounded connection, so the error comes in seconds and names the shipped
checkpoints, which work offline; with ``HF_HUB_OFFLINE=1`` a model downloaded before is read
from the cache. :func:`write_hub_folder` writes the other direction: a checkpoint's inference
weights, its card with the Hub's metadata and a "How to load" section, ready for ``hf upload``.
Mentioned in notebook 00 and the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from ldm_mini import __version__
from ldm_mini.checkpoints import (
    CONFIG_NAME,
    DIFFUSION_STAGES,
    EMA_NAME,
    FORMAT_VERSION,
    HUB_PREFIX,
    MODEL_NAME,
    SHIPPED_PREFIX,
    CheckpointError,
    export_checkpoint,
    export_ema_checkpoint,
    load_checkpoint,
    shipped_checkpoint_names,
)
from ldm_mini.data.hub import hub_endpoint
from ldm_mini.network import reachable

HUB_ID_FORM = "hf:org/name[@revision]"
CARD_NAME = "README.md"
# besides config.json and the weights: the card and the sample grids it shows
CARD_PATTERNS = (CARD_NAME, "samples*.png")
# bundled datasets that have a copy on the Hub (the card's ``datasets:``)
HUB_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist"}

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SECTION_BEGIN = "<!-- ldm-mini: how to load (written by ldm_mini.hub_models.write_hub_folder) -->"
_SECTION_END = "<!-- /ldm-mini -->"
# (repo id, revision, offline, endpoint) -> snapshot folder, so one process asks the Hub once
_RESOLVED: dict[tuple[str, str | None, bool, str], Path] = {}


class HubCheckpointUnavailableError(CheckpointError, ConnectionError):
    """The Hub cannot be reached, or (``HF_HUB_OFFLINE=1``) the model is not in the cache."""


class HubIdError(CheckpointError, ValueError):
    """A Hub checkpoint name that is not ``hf:org/name[@revision]``."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks huggingface_hub to stay offline (read at each call)."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``(repo_id, revision or None)`` of ``hf:org/name[@revision]``; :class:`HubIdError`
    naming the expected form otherwise."""
    text = spec[len(HUB_PREFIX) :] if isinstance(spec, str) and spec.startswith(HUB_PREFIX) else ""
    repo_id, at, revision = text.partition("@")
    bad_revision = at and (not revision or any(c.isspace() for c in revision))
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or bad_revision:
        raise HubIdError(
            f"{spec!r} is not a Hub checkpoint: expected {HUB_ID_FORM}, the id of a model "
            "repository on huggingface.co and optionally a branch, tag or commit, e.g. "
            "hf:my-org/fashion-ldm or hf:my-org/fashion-ldm@v1"
        )
    return repo_id, revision or None


def hub_checkpoint_dir(spec: str) -> Path:
    """The local folder of the Hub checkpoint ``spec`` (``hf:org/name[@revision]``), downloaded
    into the Hugging Face cache if needed: ``config.json``, the weights it lists, the card.

    Raises :class:`HubIdError` for a malformed name, :class:`HubCheckpointUnavailableError`
    within seconds when the Hub cannot be reached (or, with ``HF_HUB_OFFLINE=1``, when the
    model is not cached), and :class:`~ldm_mini.checkpoints.CheckpointError` for a repository
    or revision that does not exist or holds no ldm-mini checkpoint. The files' sha256s are
    checked when the checkpoint is loaded (:func:`~ldm_mini.checkpoints.load_checkpoint`).
    """
    repo_id, revision = parse_hub_id(spec)
    offline = hub_offline()
    key = (repo_id, revision, offline, hub_endpoint())
    known = _RESOLVED.get(key)
    if known is not None and (known / CONFIG_NAME).is_file():
        return known
    if not offline:
        ok, reason = reachable(hub_endpoint())
        if not ok:
            raise HubCheckpointUnavailableError(
                _unavailable(
                    spec,
                    f"the Hugging Face Hub ({hub_endpoint()}) is not reachable ({reason})",
                    offline=False,
                )
            )
    folder = _download(spec, repo_id, revision, [CONFIG_NAME, *CARD_PATTERNS], offline)
    config = _hub_config(spec, folder)
    needed = [MODEL_NAME] + [EMA_NAME] * (EMA_NAME in (config.get("files") or {}))
    pinned = folder.name if _COMMIT.fullmatch(folder.name) else revision  # the same commit
    folder = _download(spec, repo_id, pinned, [CONFIG_NAME, *needed, *CARD_PATTERNS], offline)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{spec} lists {missing} in its {CONFIG_NAME}, but the repository has no such file: "
            "its upload is incomplete; upload the whole folder ldm-mini export-hub wrote."
        )
    _check_first_stage_is_here(spec, config, folder / MODEL_NAME)
    _RESOLVED[key] = folder
    return folder


def _unavailable(spec: str, reason: str, offline: bool) -> str:
    """The message of :class:`HubCheckpointUnavailableError`: why, and what works instead."""
    shipped = ", ".join(shipped_checkpoint_names()) or "none found"
    cache_hint = (
        "Download it once where the Hub is reachable (e.g. on Colab; unset HF_HUB_OFFLINE), "
        "then HF_HUB_OFFLINE=1 reads it from the cache."
        if offline
        else "A model downloaded before is read from the local Hugging Face cache with "
        "HF_HUB_OFFLINE=1."
    )
    return (
        f"Cannot load {spec}: {reason}. Shipped checkpoints work offline: shipped:NAME with "
        f"NAME one of {shipped}. {cache_hint}"
    )


def _download(
    spec: str, repo_id: str, revision: str | None, patterns: list[str], offline: bool
) -> Path:
    """``snapshot_download`` of only ``patterns``, its errors turned into checkpoint errors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    options: dict[str, Any] = {
        "revision": revision,
        "allow_patterns": patterns,
        "library_name": "ldm-mini",
        "library_version": __version__,
    }
    if offline:
        options["local_files_only"] = True
    else:
        options["endpoint"] = hub_endpoint()
    login = "hf auth login" if _hub_cli() == "hf" else "huggingface-cli login"
    try:
        return Path(snapshot_download(repo_id, **options))
    except LocalEntryNotFoundError as err:  # not cached, offline or unreachable
        reason = (
            "offline mode is on (HF_HUB_OFFLINE) and it is not (completely) in the local "
            "Hugging Face cache"
            if offline
            else f"the Hugging Face Hub could not be reached while downloading ({_one_line(err)})"
        )
        raise HubCheckpointUnavailableError(_unavailable(spec, reason, offline)) from err
    except RevisionNotFoundError as err:
        raise CheckpointError(
            f"Cannot load {spec}: the repository {repo_id} has no revision {revision!r} (a "
            f"branch, tag or commit); hf:{repo_id} loads its latest version."
        ) from err
    except GatedRepoError as err:
        raise CheckpointError(
            f"Cannot load {spec}: the repository is gated; accept its terms on "
            f"https://huggingface.co/{repo_id} and log in ({login}, or set HF_TOKEN)."
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointError(
            f"Cannot load {spec}: there is no model repository {repo_id!r} on the Hugging Face "
            f"Hub, or it is private (then log in: {login}, or set HF_TOKEN). Check the name "
            f"on https://huggingface.co/{repo_id}."
        ) from err
    except HfHubHTTPError as err:
        message = f"Cannot load {spec}: the Hub answered with an error ({_one_line(err)})."
        raise CheckpointError(message) from err
    except (ConnectionError, TimeoutError) as err:
        reason = f"the connection to the Hub failed while downloading ({_one_line(err)})"
        raise HubCheckpointUnavailableError(_unavailable(spec, reason, offline)) from err


def _one_line(error: BaseException, limit: int = 200) -> str:
    """An error's text on one line, at most ``limit`` characters (the CLI prints one line)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_config(spec: str, folder: Path) -> dict[str, Any]:
    """The downloaded ``config.json``, or a clear error when it is not an ldm-mini one."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict) or "stage" not in config:
        raise CheckpointError(
            f"{spec} holds no ldm-mini checkpoint: the repository has no {CONFIG_NAME} with a "
            f'"stage" at its top (an ldm-mini checkpoint is {CONFIG_NAME} + {MODEL_NAME}, as '
            "ldm-mini export-hub writes them). Check the name."
        )
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{spec} was written by a newer ldm-mini (format {config['format_version']}); "
            "upgrade ldm-mini to read it."
        )
    return config


def local_first_stage(config: dict[str, Any]) -> str | None:
    """The first stage of a diffusion checkpoint's config when it is a local folder path (not
    ``identity``, ``shipped:NAME`` or ``hf:org/name``, which load anywhere); else None."""
    if config.get("stage") not in DIFFUSION_STAGES:
        return None
    source = (config.get("first_stage") or {}).get("checkpoint")
    if not isinstance(source, str) or source == "identity":
        return None
    return None if source.startswith((SHIPPED_PREFIX, HUB_PREFIX)) else source


def _has_first_stage_weights(model_file: Path) -> bool | None:
    """Whether a weights file holds ``first_stage.*`` tensors (None: unreadable; loading then
    names the problem)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(model_file), framework="pt") as weights:
            return any(k.startswith("first_stage.") for k in weights.keys())  # noqa: SIM118
    except (SafetensorError, OSError):
        return None


def _check_first_stage_is_here(spec: str, config: dict[str, Any], model_file: Path) -> None:
    """A Hub diffusion checkpoint must hold its first stage or refer to one that loads anywhere."""
    reference = local_first_stage(config)
    if reference is not None and _has_first_stage_weights(model_file) is False:
        raise CheckpointError(
            f"{spec} refers to its first stage by a folder on the machine it was exported on "
            f"({reference!r}) and does not hold that autoencoder's weights, so it cannot load "
            "here. Its author can write it again from the training run (ldm-mini export-hub RUN, "
            "whose state holds the first stage's weights) and upload it."
        )


# --------------------------------------------------------------------------------------
# Writing a folder to upload
# --------------------------------------------------------------------------------------


def write_hub_folder(
    checkpoint: str | Path, out_dir: str | Path, repo_id: str | None = None, half: bool = True
) -> Path:
    """Write ``checkpoint`` (a folder, run folder, ``shipped:NAME`` or ``hf:org/name``) into
    ``out_dir``, ready for ``hf upload``; returns ``out_dir``.

    The weights inference needs, without trainer state (an ldm/sr run with EMA: its EMA
    weights, :func:`~ldm_mini.checkpoints.export_ema_checkpoint`; otherwise
    :func:`~ldm_mini.checkpoints.export_checkpoint`), in float16 when ``half``; its card
    (``README.md``, or one written from its config) with the Hub's YAML metadata on top and a
    "How to load" section; its sample grids. ``repo_id`` (``org/name``) fills in the commands
    (else ``ORG/NAME``). Raises ValueError when ``out_dir`` exists and is not an empty folder
    (nothing is overwritten) and :class:`HubIdError` for a malformed ``repo_id``;
    :class:`~ldm_mini.checkpoints.CheckpointError` for a damaged checkpoint, or a diffusion
    checkpoint whose first stage is a local folder whose weights it does not hold.
    """
    if repo_id is not None:
        plain = repo_id.removeprefix(HUB_PREFIX)
        if "@" in plain or not _REPO_ID.fullmatch(plain) or "--" in plain or ".." in plain:
            raise HubIdError(
                f"repo_id {repo_id!r} is not a Hub model id: expected org/name (no @revision; "
                f"it is then loaded as {HUB_ID_FORM})"
            )
        repo_id = plain
    out = Path(out_dir).expanduser()
    existed = out.is_dir()
    if out.exists() and (not existed or any(out.iterdir())):
        what = "is a file" if not existed else "is not empty"
        raise ValueError(
            f"{out} {what}: write_hub_folder writes into a new or empty folder and overwrites "
            "nothing; give another folder."
        )
    loaded = load_checkpoint(checkpoint)  # every file's sha256 checked
    reference = local_first_stage(loaded.config)
    if reference is not None and not any(k.startswith("first_stage.") for k in loaded.model_state):
        raise CheckpointError(
            f"{checkpoint} refers to its first stage by the local folder {reference!r} and does "
            "not hold its weights, so a copy on the Hub could not load it. Write the folder from "
            "the training run instead (its state holds the first stage's weights, which are then "
            "copied), or train on an autoencoder that loads anywhere: --autoencoder shipped:NAME "
            "or --autoencoder hf:org/name (upload the autoencoder first with write_hub_folder)."
        )
    source = loaded.path
    try:
        if loaded.stage in DIFFUSION_STAGES and loaded.ema_state is not None:
            export_ema_checkpoint(source, out, {}, half=half)
        else:
            export_checkpoint(source, out, half=half)
        for extra in sorted([*source.glob("*.png"), *source.glob("metrics.json")]):
            shutil.copy2(extra, out / extra.name)
        card = source / CARD_NAME
        body = card.read_text(encoding="utf-8") if card.is_file() else None
        config = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
        text = model_card(config, repo_id, body, _has_first_stage_weights(out / MODEL_NAME))
        (out / CARD_NAME).write_text(text, encoding="utf-8")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir(parents=True, exist_ok=True)
        raise
    return out


def upload_command(out_dir: str | Path, repo_id: str | None = None) -> str:
    """The shell command that uploads ``out_dir`` to ``repo_id`` (``hf upload``, or
    ``huggingface-cli upload`` with a huggingface_hub before 0.34)."""
    return f"{_hub_cli()} upload {repo_id or 'ORG/NAME'} {shlex.quote(str(out_dir))} ."


def _hub_cli() -> str:
    """``hf`` (huggingface_hub 0.34 and later) or ``huggingface-cli`` (before)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        numbers = re.findall(r"\d+", version("huggingface_hub"))[:2]
    except PackageNotFoundError:
        return "hf"
    major, minor = (int(n) for n in (numbers + ["0", "0"])[:2])
    return "hf" if (major, minor) >= (0, 34) else "huggingface-cli"


def card_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face model-card metadata of a checkpoint's config (the card's YAML)."""
    stage = config["stage"]
    condition = (config.get("condition") or {}).get("kind")
    tags = ["latent-diffusion", "ldm-mini", stage]
    if stage == "ldm" and condition in ("class", "text"):
        tags.append(f"{condition}-conditional")
    if stage == "sr":
        tags.append("super-resolution")
    if stage == "inpaint":
        tags.append("inpainting")
    licence = config.get("license") or (config.get("data") or {}).get("license") or "mit"
    metadata: dict[str, Any] = {
        "library_name": "ldm-mini",
        "license": str(licence).lower(),
        "tags": tags,
    }
    datasets = _hub_datasets(config)
    if datasets:
        metadata["datasets"] = datasets
    pipeline = {
        "ldm": "text-to-image" if condition == "text" else "unconditional-image-generation",
        "sr": "image-to-image",
        "inpaint": "image-to-image",
        "classifier": "image-classification",
    }.get(stage)
    if pipeline:
        metadata["pipeline_tag"] = pipeline
    return metadata


def _hub_datasets(config: dict[str, Any]) -> list[str]:
    """The Hub ids of the training data, where known (a bundled set with a Hub copy, or a
    Hub dataset id that is not a local folder)."""
    name = (config.get("data") or {}).get("dataset")
    if not isinstance(name, str):
        return []
    if name in HUB_DATASETS:
        return [HUB_DATASETS[name]]
    return [name] if _REPO_ID.fullmatch(name) and not Path(name).exists() else []


def model_card(
    config: dict[str, Any],
    repo_id: str | None = None,
    body: str | None = None,
    holds_first_stage: bool | None = None,
) -> str:
    """A model card: :func:`card_metadata` as YAML front matter, ``body`` (an existing card;
    its own front matter is merged, an earlier "How to load" section replaced) or a short card
    written from ``config``, then the "How to load" section for ``repo_id``."""
    import yaml

    metadata = card_metadata(config)
    text = body if body is not None else _card_from_config(config)
    match = re.match(r"\A---\n(.*?)\n---\n", text, flags=re.DOTALL)
    if match:
        theirs = yaml.safe_load(match.group(1)) or {}
        if isinstance(theirs, dict):
            tags = [
                *theirs.get("tags", []),
                *(t for t in metadata["tags"] if t not in theirs.get("tags", [])),
            ]
            metadata = {**metadata, **theirs, "tags": tags}
        text = text[match.end() :]
    text = re.sub(
        rf"\n*{re.escape(_SECTION_BEGIN)}.*?{re.escape(_SECTION_END)}\n*",
        "\n",
        text,
        flags=re.DOTALL,
    )
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    section = _how_to_load(config, repo_id, holds_first_stage)
    return f"---\n{front}---\n\n{text.strip()}\n\n{section}\n"


def _card_from_config(config: dict[str, Any]) -> str:
    """A short card for a checkpoint that has none: stage, data, architecture, step, metrics."""
    stage = config["stage"]
    data = config.get("data") or {}
    model = config.get("model") or {}
    condition = (config.get("condition") or {}).get("kind")
    kind = f"{condition}-conditional" if condition in ("class", "text") else "unconditional"
    what = {
        "autoencoder": f"{str(model.get('kind', '')).upper()} autoencoder (first stage)",
        "ldm": f"{kind} latent diffusion model",
        "sr": "super-resolution latent diffusion model",
        "classifier": "image classifier",
    }.get(stage, f"{stage} checkpoint")
    dataset = data.get("dataset", "unknown data")
    lines = [
        f"# ldm-mini {what}: {dataset}",
        "",
        f"A checkpoint of ldm-mini, the course on Latent Diffusion Models (stage `{stage}`).",
        "",
        f"- **Data:** `{dataset}`" + _size(data),
    ]
    if stage == "autoencoder":
        keys = ("kind", "f", "latent_channels", "base_channels", "channel_mult", "num_res_blocks")
    else:
        keys = (
            "base_channels",
            "channel_mult",
            "num_res_blocks",
            "attention_levels",
            "num_classes",
            "context_dim",
            "concat_channels",
            "widths",
        )
    numbers = ", ".join(f"{k} {model[k]}" for k in keys if model.get(k) is not None)
    if numbers:
        lines.append(f"- **Architecture:** {numbers}")
    diffusion = config.get("diffusion") or {}
    if diffusion:
        lines.append(
            f"- **Diffusion:** {diffusion.get('parameterization', 'eps')}-prediction, "
            f"{diffusion.get('schedule')} schedule, T = {diffusion.get('num_timesteps')}"
        )
    lines.append(f"- **Steps trained:** {int(config.get('step', 0)):,}")
    weights = config.get("weights_dtype", "float32")
    lines.append(f"- **Weights:** {weights}" + (" (EMA)" if config.get("shipped_weights") else ""))
    if config.get("command"):
        lines.append(f"- **Trained with:** `{config['command']}`")
    rows = _metric_rows(config)
    if rows:
        lines += ["", "## Measured", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _size(data: dict[str, Any]) -> str:
    size = data.get("image_size") or data.get("crop_size")
    return f", {size}x{size}" if size else ""


def _metric_rows(config: dict[str, Any], limit: int = 24) -> list[tuple[str, str]]:
    """The numbers recorded in the config's ``metrics`` / ``measured``, one level deep."""
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((name, f"{value:.4g}" if isinstance(value, float) else str(value)))

    for section in ("metrics", "measured"):
        for key, value in (config.get(section) or {}).items():
            if isinstance(value, dict):
                for inner, number in value.items():
                    add(f"{key}.{inner}", number)
            else:
                add(key, value)
    return rows[:limit]


def _how_to_load(
    config: dict[str, Any], repo_id: str | None, holds_first_stage: bool | None
) -> str:
    """The card's "How to load" and upload section for ``repo_id`` (``ORG/NAME`` if None)."""
    repo = repo_id or "ORG/NAME"
    stage = config["stage"]
    name = f"hf:{repo}"
    condition = (config.get("condition") or {}).get("kind")
    if stage == "ldm":
        extra = ""
        if condition == "text":
            prompt = (config.get("prompt_examples") or ["a red circle"])[0]
            extra = f" --prompt {shlex.quote(str(prompt))} --guidance 3"
        command = f"ldm-mini sample --checkpoint {name}{extra} --n 16 --out samples.png"
    elif stage == "sr":
        command = f"ldm-mini superres low_res.png --checkpoint {name} --out upscaled.png"
    elif stage == "inpaint":
        command = f"ldm-mini inpaint image.png --mask mask.png --checkpoint {name} --out filled.png"
    elif stage == "autoencoder":
        command = (
            f"ldm-mini evaluate autoencoder --checkpoint {name} --json\n"
            f"ldm-mini train-ldm --autoencoder {name} --out runs/ldm   # an LDM on its latents"
        )
    else:
        command = ""
    if stage == "classifier":
        python = "from ldm_mini.classifier import load_classifier\n"
        python += f'classifier = load_classifier("{name}")'
    else:
        python = f'from ldm_mini.pipelines import load\nmodel, config = load("{name}")'
    lines = [
        _SECTION_BEGIN,
        "## How to load",
        "",
        "A checkpoint of ldm-mini, the course on Latent Diffusion Models (install ldm-mini "
        "as its README says; on Colab the first cell of any course notebook does). The first "
        "use downloads `config.json` and the weights into the Hugging Face cache and checks "
        "every file's sha256:",
        "",
    ]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [
        "```python",
        python,
        "```",
        "",
        f"`{name}@REVISION` pins a branch, tag or commit; once downloaded, "
        "`HF_HUB_OFFLINE=1` reads it from the cache without the network.",
    ]
    first = (
        (config.get("first_stage") or {}).get("checkpoint") if stage in DIFFUSION_STAGES else None
    )
    if first == "identity":
        lines.append("It works in pixel space (no first stage).")
    elif holds_first_stage:
        lines.append("Its first stage (the autoencoder) is stored in this checkpoint.")
    elif isinstance(first, str) and first.startswith(SHIPPED_PREFIX):
        lines.append(
            f"Its first stage is `{first}`, the autoencoder shipped inside ldm-mini, checked by "
            "the sha256 of its weights (an ldm-mini that ships the same one is needed)."
        )
    elif isinstance(first, str) and first.startswith(HUB_PREFIX):
        lines.append(f"Its first stage is `{first}`, downloaded the same way.")
    cli = _hub_cli()
    login = "hf auth login" if cli == "hf" else "huggingface-cli login"
    lines += [
        "",
        "## How to upload this folder",
        "",
        "Written by `ldm_mini.hub_models.write_hub_folder`; from inside the folder:",
        "",
        "```bash",
        login,
        f"{cli} upload {repo} . .",
        "```",
    ]
    if cli == "hf":
        lines.append(
            "(huggingface_hub before 0.34: `huggingface-cli login`, `huggingface-cli upload`.)"
        )
    lines.append(_SECTION_END)
    return "\n".join(lines)


__all__ = [
    "HUB_ID_FORM",
    "HubCheckpointUnavailableError",
    "HubIdError",
    "card_metadata",
    "hub_checkpoint_dir",
    "hub_offline",
    "local_first_stage",
    "model_card",
    "parse_hub_id",
    "upload_command",
    "write_hub_folder",
]
