"""Bad input through the command line: one clear line, exit status 2, nothing lost on disk.

One test per careless input: unparsable ``--set`` values, ``--out`` of the wrong kind, a
device that is not there, a trainer state that holds code, impossible sample counts, an image
too large to open, NaN or inf images, a runaway prompt; and the stale temporary folder that a
killed save leaves behind, removed when the run starts again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch

from ldm_mini.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'nothing changed on disk' compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("device:")]
    assert len(lines) == 1 and lines[0].startswith("ldm-mini: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


TRAIN_AE = [
    "train-autoencoder",
    "--preset",
    "tiny",
    "--dataset",
    "fashion_mnist",
    "--set",
    "data.limit=16",
]


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [("train.steps=abc", "train.steps takes a number"),
     ("optim.lr=fast", "optim.lr takes a number"),
     ("data.hflip=maybe", "data.hflip takes true or false")],
)  # fmt: skip
def test_an_unparsable_set_value_names_the_key_and_writes_nothing(
    tmp_path, capsys, setting, fragment
):
    out = tmp_path / "run"
    assert main([*TRAIN_AE, "--set", setting, "--out", str(out)]) == 2
    one_line_error(capsys, fragment)
    assert not out.exists()


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    assert main([*TRAIN_AE, "--out", str(out)]) == 2
    one_line_error(capsys, "is a file; give a folder")
    assert out.read_text() == "my notes"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize(
    "argv",
    [[*TRAIN_AE, "--out", "{tmp}/run"],
     ["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--out", "{tmp}/a.png"],
     ["evaluate", "ldm", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--n", "10"]],
)  # fmt: skip
def test_a_missing_gpu_is_one_line_that_says_what_to_use(tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--device", "cuda"]) == 2
    one_line_error(capsys, "no CUDA GPU", "--device auto")
    assert list(tmp_path.iterdir()) == []
    assert main(["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--out",
                 str(tmp_path / "a.png"), "--device", "gpu"]) == 2  # fmt: skip
    one_line_error(capsys, "unknown device 'gpu'")


def test_a_trainer_state_with_code_in_it_is_refused_without_running_it(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "autoencoder_tiny", run)
    state = run / "checkpoint" / "trainer_state.pt"
    # a pickle that names a Python object (here a harmless datetime) instead of tensors: a
    # weights_only load must refuse it, whatever the file claims
    torch.save({"step": 4, "made": datetime(2026, 1, 1)}, state)
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    config["files"]["trainer_state.pt"] = hashlib.sha256(state.read_bytes()).hexdigest()
    (run / "checkpoint" / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    assert main([*TRAIN_AE, "--train-steps", "6", "--out", str(run)]) == 2
    one_line_error(capsys, "holds more than tensors", "--no-resume")
    assert snapshot(run) == before


@pytest.mark.parametrize("n", ["0", "-5"])
def test_sample_counts_must_be_positive(tmp_path, capsys, n):
    out = tmp_path / "a.png"
    argv = ["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--out", str(out)]
    assert main([*argv, "--n", n]) == 2
    one_line_error(capsys, f"--n must be a positive number of samples, got {n}")
    assert not out.exists()


def test_generate_names_n_when_it_is_not_positive():
    from ldm_mini.pipelines import generate, load_ldm

    ldm, _ = load_ldm("shipped:fashion_mnist_ldm_class")
    with pytest.raises(ValueError, match="n is the number of images to generate"):
        generate(ldm, 0, 32)


def test_sample_out_that_is_a_folder_is_refused(tmp_path, capsys):
    argv = ["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--out", str(tmp_path)]
    assert main(argv) == 2
    one_line_error(capsys, "is a folder; give an image file name")
    assert list(tmp_path.iterdir()) == []


def test_an_image_too_large_to_open_safely_is_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then "a bomb"
    out = tmp_path / "x4.png"
    assert (
        main(["superres", str(path), "--checkpoint", "shipped:photos_ldm_sr", "--out", str(out)])
        == 2
    )
    one_line_error(capsys, "pixels PIL opens safely", "downscale it first")
    assert not out.exists()


def test_nan_or_inf_images_are_refused_where_they_enter_the_models():
    from ldm_mini.pipelines import load_autoencoder, load_sr, super_resolve

    autoencoder, _ = load_autoencoder("shipped:fashion_mnist_kl_f4")
    images = torch.zeros(2, 1, 32, 32)
    images[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or inf value"):
        autoencoder.encode_latent(images)
    images[1, 0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        autoencoder(images)
    sr, _ = load_sr("shipped:photos_ldm_sr")
    low = torch.zeros(1, 3, 16, 16)
    low[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="low-resolution images"):
        super_resolve(sr, low, steps=2)


def test_a_runaway_prompt_is_warned_about_in_one_short_line():
    from ldm_mini.pipelines import load_ldm

    ldm, _ = load_ldm("shipped:shapes_ldm_text")
    prompt = " ".join(["a red circle above a blue square"] * 1500)  # 10,500 words
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ldm.encode_condition([prompt])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "10500 words" in message and len(message) < 250, message


def test_a_stale_temporary_checkpoint_folder_is_removed_when_the_run_starts_again(
    tmp_path, one_thread
):
    from ldm_mini.configs import apply_overrides, load_stage_preset
    from ldm_mini.stages import train_autoencoder

    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "autoencoder_tiny", run)
    # what a save killed before its renames leaves: a half-written folder beside the checkpoint
    stale = run / ".checkpoint.tmp-k1ll3d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    steps = ["data.limit=16", "train.steps=5", "train.sample_every=100"]
    config = apply_overrides(load_stage_preset("autoencoder", "tiny"), steps)
    train_autoencoder(config, run, progress=False)
    assert not stale.exists()
    assert not list(run.glob(".checkpoint.tmp-*"))
    assert json.loads((run / "checkpoint" / "config.json").read_text())["step"] == 5
