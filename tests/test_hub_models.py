"""Checkpoints on the Hugging Face Hub (``hf:org/name``): offline errors, ids, and round trips
through a folder written by ``write_hub_folder`` and a stand-in for ``snapshot_download``."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError

from ldm_mini import hub_models
from ldm_mini.checkpoints import (
    CheckpointError,
    export_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
    saved_config,
)
from ldm_mini.cli import main
from ldm_mini.hub_models import (
    HubCheckpointUnavailableError,
    HubIdError,
    card_metadata,
    parse_hub_id,
    write_hub_folder,
)
from ldm_mini.pipelines import load_autoencoder, load_ldm

LDM = "shipped:fashion_mnist_ldm_class"
AUTOENCODER = "shipped:fashion_mnist_kl_f4"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Repositories are local folders; ``snapshot_download`` copies the files that match
    ``allow_patterns`` into a cache snapshot (as the real one does) and records each call."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.repos: dict[str, Path] = {}
        self.calls: list[dict] = []

    def add(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = Path(folder)

    def snapshot_download(self, repo_id: str, **options) -> str:
        self.calls.append({"repo_id": repo_id, **options})
        snapshot = self.cache / repo_id.replace("/", "--") / "snapshots" / COMMIT
        if options.get("local_files_only"):
            if not snapshot.is_dir():
                raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")
            return str(snapshot)
        if repo_id not in self.repos:
            error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
            Exception.__init__(error, "404 Repository Not Found")
            raise error
        for file in self.repos[repo_id].rglob("*"):
            name = file.relative_to(self.repos[repo_id]).as_posix()
            wanted = any(fnmatch.fnmatch(name, p) for p in options["allow_patterns"])
            if file.is_file() and wanted and not (snapshot / name).exists():
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, snapshot / name)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, with a fresh memory of resolved ids."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_models, "_RESOLVED", {})


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online) -> FakeHub:
    """A reachable stand-in Hub."""
    fake = FakeHub(tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(hub_models, "reachable", lambda url, timeout=3.0: (True, ""))
    return fake


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_unreachable_hub_fails_fast_with_one_clear_message(tmp_path, monkeypatch, online, capsys):
    # .invalid never resolves (RFC 2606): this is "offline" on every machine
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")

    def must_not_download(*args, **kwargs):
        raise AssertionError("snapshot_download was called although the Hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", must_not_download)
    start = time.monotonic()
    with pytest.raises(HubCheckpointUnavailableError) as info:
        load_checkpoint("hf:x/y")
    assert time.monotonic() - start < 10, "the offline error must not hang on retries"
    message = str(info.value)
    assert message.startswith("Cannot load hf:x/y: the Hugging Face Hub (https://hub.invalid)")
    assert (
        "is not reachable" in message
        and "Shipped checkpoints work offline: shipped:NAME" in message
    )
    assert "fashion_mnist_ldm_class" in message and "fashion_mnist_kl_f4" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ConnectionError)
    # the CLI needs no change: one line, exit status 2
    assert main(["sample", "--checkpoint", "hf:x/y", "--out", str(tmp_path / "s.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # "device: cpu", then the error
    assert lines[-1].startswith("ldm-mini: error: Cannot load hf:x/y: the Hugging Face Hub")
    assert not any("Traceback" in line for line in lines)


def test_offline_mode_reads_the_cache_and_names_what_is_not_there(tmp_path: Path):
    # a fresh process (huggingface_hub reads HF_HOME at import) with a Hugging Face cache that
    # holds one model, laid out as snapshot_download leaves it
    repo = tmp_path / "hub" / "models--org--cached"
    write_hub_folder(AUTOENCODER, repo / "snapshots" / COMMIT, "org/cached")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    code = (
        "from ldm_mini.checkpoints import load_checkpoint\n"
        "from ldm_mini.hub_models import HubCheckpointUnavailableError\n"
        "print('LOADED', load_checkpoint('hf:org/cached').stage)\n"
        "try:\n"
        "    load_checkpoint('hf:someone/not-downloaded')\n"
        "except HubCheckpointUnavailableError as err:\n"
        "    print('HUB-ERROR', err)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "LOADED autoencoder" in result.stdout, result.stderr[-2000:]
    assert "HUB-ERROR" in result.stdout, result.stderr[-2000:]
    assert "offline mode is on (HF_HUB_OFFLINE)" in result.stdout
    assert "not (completely) in the local Hugging Face cache" in result.stdout
    assert "shipped:NAME" in result.stdout and "fashion_mnist_ldm_class" in result.stdout


@pytest.mark.parametrize(
    "bad", ["hf:", "hf:noslash", "hf:a/b/c", "hf:/b", "hf:a/", "hf:a/b@", "hf:a/-b", "hf:a--b/c"]
)
def test_malformed_hub_ids_name_the_expected_form(bad: str, online):
    with pytest.raises(HubIdError, match=r"expected hf:org/name\[@revision\]") as info:
        load_checkpoint(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CheckpointError)


def test_hub_ids_parse():
    assert parse_hub_id("hf:my-org/fashion.ldm_2") == ("my-org/fashion.ldm_2", None)
    assert parse_hub_id("hf:org/name@v1") == ("org/name", "v1")
    assert parse_hub_id(f"hf:org/name@{COMMIT}") == ("org/name", COMMIT)


def test_ldm_round_trip_through_the_hub(tmp_path: Path, hub: FakeHub, one_thread):
    folder = write_hub_folder(LDM, tmp_path / "upload", "org/fashion-ldm")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "samples.png", "samples_guidance3.png"
    ]  # fmt: skip
    (folder / "pytorch_model.bin").write_bytes(b"not for ldm-mini")  # other files in the repo
    hub.add("org/fashion-ldm", folder)

    loaded = load_checkpoint("hf:org/fashion-ldm", expected_stage="ldm")
    shipped = load_checkpoint(LDM)
    assert _same_weights(loaded.model_state, shipped.model_state)
    assert loaded.config["first_stage"] == shipped.config["first_stage"]
    # only what a checkpoint needs, config first (a repo of another library costs one file)
    first, second = hub.calls
    assert first["repo_id"] == "org/fashion-ldm" and first["revision"] is None
    assert sorted(first["allow_patterns"]) == ["README.md", "config.json", "samples*.png"]
    assert "model.safetensors" in second["allow_patterns"] and second["revision"] == COMMIT
    assert not any(call.get("local_files_only") for call in hub.calls)
    assert not (loaded.path / "pytorch_model.bin").exists()
    assert loaded.path.name == COMMIT and (loaded.path / "README.md").is_file()

    # the LDM loads with its shipped first stage, and the CLI samples from it unchanged
    ldm, config = load_ldm("hf:org/fashion-ldm", "cpu")
    reference, _ = load_ldm(LDM, "cpu")
    assert _same_weights(ldm.state_dict(), reference.state_dict())
    out = tmp_path / "samples.png"
    argv = ["sample", "--checkpoint", "hf:org/fashion-ldm", "--n", "2", "--sample-steps", "2"]
    assert main([*argv, "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert out.is_file()

    # a revision is passed on
    hub.calls.clear()
    load_checkpoint("hf:org/fashion-ldm@v1")
    assert hub.calls[0]["revision"] == "v1"


def test_a_tampered_download_is_rejected(tmp_path: Path, hub: FakeHub):
    hub.add("org/ae", write_hub_folder(AUTOENCODER, tmp_path / "upload"))
    directory = load_checkpoint("hf:org/ae").path
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint("hf:org/ae")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_autoencoder("hf:org/ae")


def test_offline_mode_reads_a_model_downloaded_before(tmp_path: Path, hub: FakeHub, monkeypatch):
    hub.add("org/ae", write_hub_folder(AUTOENCODER, tmp_path / "upload", "org/ae"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_models, "reachable", lambda *a, **k: pytest.fail("network checked"))
    with pytest.raises(HubCheckpointUnavailableError, match="not .* in the local Hugging Face"):
        load_checkpoint("hf:org/ae")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_models, "reachable", lambda url, timeout=3.0: (True, ""))
    online_copy = load_checkpoint("hf:org/ae")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.calls.clear()
    offline_copy = load_checkpoint("hf:org/ae")
    assert hub.calls and all(call["local_files_only"] for call in hub.calls)
    assert _same_weights(offline_copy.model_state, online_copy.model_state)
    assert _same_weights(offline_copy.model_state, load_checkpoint(AUTOENCODER).model_state)


def test_ema_run_ships_its_ema_and_an_ldm_on_a_hub_autoencoder_loads(tmp_path, hub, one_thread):
    # a training run: raw weights, EMA (U-Net names), the first stage in the state, trainer state
    shipped = load_checkpoint(LDM)
    autoencoder = load_checkpoint(AUTOENCODER)
    hub.add("org/ae", write_hub_folder(AUTOENCODER, tmp_path / "ae", "org/ae"))
    config = saved_config(shipped.config)
    config["first_stage"] = {**config["first_stage"], "checkpoint": "hf:org/ae"}
    config.pop("shipped_weights")
    ema = {k.removeprefix("unet."): v for k, v in shipped.model_state.items()}
    raw = {k: v + 1 for k, v in shipped.model_state.items()}
    raw |= {f"first_stage.{k}": v for k, v in autoencoder.model_state.items()}
    save_checkpoint(tmp_path / "run" / "checkpoint", stage="ldm", config=config,
                    model_state=raw, ema_state=ema, trainer_state={"step": torch.tensor(7)},
                    step=7)  # fmt: skip

    folder = write_hub_folder(tmp_path / "run", tmp_path / "upload", "org/run-ldm")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors"
    ]  # fmt: skip
    card = (folder / "README.md").read_text()
    assert card.count("## How to load") == 1 and "## Measured" in card  # written from config
    metadata = _front_matter(card)
    assert metadata["pipeline_tag"] == "unconditional-image-generation"
    assert metadata["tags"] == ["latent-diffusion", "ldm-mini", "ldm", "class-conditional"]
    assert (
        "- **Steps trained:** 7" in card and "ldm-mini sample --checkpoint hf:org/run-ldm" in card
    )
    hub.add("org/run-ldm", folder)
    ldm, config = load_ldm("hf:org/run-ldm", "cpu")
    reference, _ = load_ldm(LDM, "cpu")
    assert _same_weights(ldm.state_dict(), reference.state_dict())  # the EMA, not raw + 1
    assert config["shipped_weights"] == "ema" and config["first_stage"]["checkpoint"] == "hf:org/ae"
    # the first stage's weights were copied (not shipped): the LDM does not need org/ae
    assert any(k.startswith("first_stage.") for k in load_checkpoint(folder).model_state)


def test_a_first_stage_in_a_local_folder_is_refused_unless_its_weights_are_inside(
    tmp_path: Path, hub: FakeHub
):
    local_ae = export_checkpoint(AUTOENCODER, tmp_path / "my_ae")
    first = read_checkpoint_config(LDM)["first_stage"]
    by_path = export_checkpoint(LDM, tmp_path / "by_path", {"first_stage": {**first,
                                "checkpoint": str(local_ae)}})  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="refers to its first stage by the local folder"):
        write_hub_folder(by_path, out)
    assert not out.exists()
    # uploaded by hand anyway: refused at load time with what to do
    hub.add("org/by-path", by_path)
    with pytest.raises(CheckpointError, match="cannot load here.*ldm-mini export-hub RUN"):
        load_ldm("hf:org/by-path")

    checkpoint = load_checkpoint(by_path)
    state = dict(checkpoint.model_state)
    state |= {f"first_stage.{k}": v for k, v in load_checkpoint(local_ae).model_state.items()}
    inside = save_checkpoint(tmp_path / "inside", stage="ldm", step=checkpoint.step,
                             config=saved_config(checkpoint.config), model_state=state)  # fmt: skip
    folder = write_hub_folder(inside, out, "org/inside")
    assert (
        "Its first stage (the autoencoder) is stored in this checkpoint."
        in (folder / "README.md").read_text()
    )
    hub.add("org/inside", folder)
    ldm, _ = load_ldm("hf:org/inside")
    reference, _ = load_ldm(LDM)
    assert _same_weights(ldm.state_dict(), reference.state_dict())


def test_the_card_has_hub_metadata_and_one_how_to_load_section(tmp_path: Path, hub: FakeHub):
    folder = write_hub_folder(AUTOENCODER, tmp_path / "first", "org/first")
    card = (folder / "README.md").read_text()
    metadata = _front_matter(card)
    assert metadata["library_name"] == "ldm-mini" and metadata["license"] == "mit"
    assert metadata["tags"][:3] == ["latent-diffusion", "ldm-mini", "autoencoder"]
    assert metadata["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert "pipeline_tag" not in metadata  # an autoencoder generates nothing by itself
    assert "ldm-mini evaluate autoencoder --checkpoint hf:org/first" in card
    assert "hf upload org/first . ." in card
    # the shipped card's own text is kept, after the metadata
    shipped_card = (load_checkpoint(AUTOENCODER).path / "README.md").read_text()
    assert card.split("---\n", 2)[2].lstrip().startswith(shipped_card.splitlines()[0])
    # written again from the Hub copy: the metadata and the section are replaced, not repeated
    hub.add("org/first", folder)
    again = write_hub_folder("hf:org/first", tmp_path / "second", "org/second")
    card = (again / "README.md").read_text()
    assert card.count("## How to load") == 1 and card.count("library_name") == 1
    assert "hf:org/second" in card and "hf:org/first" not in card
    assert _front_matter(card)["tags"].count("ldm-mini") == 1


@pytest.mark.parametrize(
    "name, tag, stage",
    [
        ("fashion_mnist_ldm_class", "unconditional-image-generation", "ldm"),
        ("emoji_ldm_text", "text-to-image", "ldm"),
        ("photos_ldm_sr", "image-to-image", "sr"),
    ],
)
def test_pipeline_tags_follow_the_stage_and_condition(name: str, tag: str, stage: str):
    metadata = card_metadata(read_checkpoint_config(f"shipped:{name}"))
    assert metadata["pipeline_tag"] == tag and stage in metadata["tags"]
    yaml.safe_load(yaml.safe_dump(metadata))  # plain YAML


def test_a_folder_that_is_not_empty_is_refused_and_left_unchanged(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        write_hub_folder(AUTOENCODER, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (
        out / "keep.txt"
    ).read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_hub_folder(AUTOENCODER, tmp_path / "file")
    with pytest.raises(HubIdError, match="expected org/name"):
        write_hub_folder(AUTOENCODER, tmp_path / "new", "org/name@v1")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_hub_folder(AUTOENCODER, empty) / "config.json").is_file()


def test_a_repository_without_an_ldm_mini_checkpoint_is_a_clear_error(tmp_path, hub: FakeHub):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (other / "model.safetensors").write_bytes(b"large weights of another library")
    hub.add("org/bert", other)
    with pytest.raises(CheckpointError, match="hf:org/bert holds no ldm-mini checkpoint"):
        load_checkpoint("hf:org/bert")
    assert len(hub.calls) == 1  # the weights were not downloaded
    with pytest.raises(CheckpointError, match="no model repository 'org/missing'"):
        load_checkpoint("hf:org/missing")


def test_export_hub_command_writes_the_folder_and_says_how_to_upload(tmp_path, hub, capsys):
    out = tmp_path / "upload"
    assert main(["export-hub", AUTOENCODER, "--out", str(out), "--repo-id", "org/ae"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "upload org/ae" in printed
    assert "--checkpoint hf:org/ae" in printed
    assert read_checkpoint_config(out)["weights_dtype"] == "float16"
    hub.add("org/ae", out)
    loaded, shipped = load_checkpoint("hf:org/ae"), load_checkpoint(AUTOENCODER)
    assert _same_weights(loaded.model_state, shipped.model_state)
    # a folder that is not empty, or a malformed repository id: one line, nothing written
    before = sorted(p.name for p in out.iterdir())
    assert main(["export-hub", AUTOENCODER, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == before
    other = tmp_path / "other"
    assert main(["export-hub", AUTOENCODER, "--out", str(other), "--repo-id", "a/b/c"]) == 2
    assert "org/name" in capsys.readouterr().err and not other.exists()
