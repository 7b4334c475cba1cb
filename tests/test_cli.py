"""The ldm-mini command: datasets, env and the tour."""

from __future__ import annotations

import json
from pathlib import Path

from ldm_mini.cli import main


def test_datasets_lists_bundled_sets_with_sizes_and_licences(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "test 10,000" in lines["fashion_mnist"] and "MIT" in lines["fashion_mnist"]
    assert "OFL-1.1" in lines["emoji"] and "MB" in lines["emoji"]
    assert "procedural" in lines["shapes"] and "generated" in lines["shapes"]
    assert "CC-BY-2.0" in lines["photos"]


def test_datasets_json(capsys):
    assert main(["datasets", "--json"]) == 0
    infos = {info["name"]: info for info in json.loads(capsys.readouterr().out)}
    assert infos["fashion_mnist"]["splits"] == {"train": 20_000, "test": 10_000}
    assert sum(infos["emoji"]["splits"].values()) >= 1_000


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: ldm-mini" in capsys.readouterr().out


def test_env_without_network(capsys):
    assert main(["env", "--json", "--no-network"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] in ("cpu", "cuda", "mps") and info["quick_mode"] is True
    assert info["packages"]["torch"] != "missing"


def test_tour_writes_a_page_with_every_dataset(tmp_path: Path, capsys):
    assert main(["tour", "--out", str(tmp_path), "--n", "4"]) == 0
    page = (tmp_path / "index.html").read_text()
    for name in ("fashion_mnist", "emoji", "photos", "shapes", "shapes_truth"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1_000
        assert f"{name}.png" in page


def test_data_errors_exit_with_status_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LDM_MINI_DATA", str(tmp_path))
    assert main(["datasets"]) == 2
    assert "LDM_MINI_DATA" in capsys.readouterr().err


def test_train_ldm_sample_and_evaluate(tmp_path: Path, capsys, one_thread):
    run = tmp_path / "ldm"
    assert main(["train-ldm", "--preset", "tiny", "--out", str(run), "--quiet"]) == 0
    assert (run / "checkpoint" / "ema.safetensors").is_file()
    grid, gif = tmp_path / "grid.png", tmp_path / "anim.gif"
    status = main(["sample", "--checkpoint", str(run), "--n", "4", "--sample-steps", "3",
                   "--out", str(grid), "--trajectory", str(gif), "--quiet"])  # fmt: skip
    assert status == 0 and grid.stat().st_size > 0
    from PIL import Image

    with Image.open(gif) as animation:
        assert animation.n_frames == 4  # x_T and 3 steps
    capsys.readouterr()
    status = main(["evaluate", "ldm", "--checkpoint", str(run), "--n", "16", "--sample-steps", "2",
                   "--no-kid", "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["n"] == 16 and result["fd"] > 0
    assert result["fd_label"] in ("FID", "FD-EffNet") and result["seconds_per_sample"] > 0
    # a damaged checkpoint, or a first stage that is not an autoencoder, is a one-line error
    (run / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    assert main(["sample", "--checkpoint", str(run), "--out", str(grid), "--quiet"]) == 2
    assert "corrupted or truncated" in capsys.readouterr().err
    status = main(["train-ldm", "--preset", "tiny", "--out", str(tmp_path / "x"), "--quiet",
                   "--autoencoder", str(tmp_path)])  # fmt: skip
    assert status == 2


def test_text_ldm_trains_and_samples_from_prompts(tmp_path: Path, capsys, one_thread):
    run = tmp_path / "text"
    status = main(["train-ldm", "--preset", "tiny", "--condition", "text", "--dataset", "shapes",
                   "--autoencoder", "shipped:emoji_kl_f4", "--train-steps", "2", "--out", str(run),
                   "--set", "data.limit=64", "--set", "condition.text_dim=16",
                   "--set", "train.sample_every=2", "--quiet"])  # fmt: skip
    assert status == 0
    grid = tmp_path / "grid.png"
    status = main(["sample", "--checkpoint", str(run), "--n", "2", "--sample-steps", "2", "--quiet",
                   "--prompt", "a yellow circle to the left of a green circle", "--guidance", "3",
                   "--out", str(grid)])  # fmt: skip
    assert status == 0 and grid.stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run), "--n", "2", "--out", str(grid)]) == 2
    assert "give --prompt" in capsys.readouterr().err
    status = main(["sample", "--checkpoint", str(run), "--n", "2", "--out", str(grid), "--quiet",
                   "--prompt", "a crimson circle"])  # fmt: skip
    assert status == 2 and "outside the vocabulary" in capsys.readouterr().err
    capsys.readouterr()
    status = main(["evaluate", "ldm", "--checkpoint", str(run), "--n", "8", "--sample-steps", "2",
                   "--no-kid", "--json", "--guidance", "2"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and 0.0 <= result["conditioning_accuracy"] <= 1.0
    assert set(result["conditioning_by_part"]) == {"count", "colours", "shapes", "relation"}
    assert "held-out" in result["conditioning_prompts"]
