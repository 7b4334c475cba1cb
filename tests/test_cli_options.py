"""The command line's shared vocabulary: every command's flags, --json, --quiet, --config files,
old flag names, progress bars, and ``sample --out-dir``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ldm_mini.cli import PERCEPTUAL_BACKBONES, build_parser, main

# commands that load or train a model: a device (default auto), bars to silence, numbers to print
MODEL_COMMANDS = (
    "train-autoencoder", "train-ldm", "train-sr", "train-inpaint", "demo", "sample", "superres",
    "inpaint", "evaluate autoencoder", "evaluate ldm", "evaluate sr", "evaluate inpaint",
)  # fmt: skip
# the others, and what each has: instant listings print JSON; grading runs notebooks for minutes
OTHER_COMMANDS = {
    "datasets": {"--json"},
    "env": {"--json"},
    "tour": {"--quiet"},  # pictures only, no numbers
    "classroom make-student": set(),  # instant, writes notebooks
    "export-hub": set(),  # seconds, writes a folder
    "classroom grade": {"--json", "--quiet"},
}


def all_commands() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command of the parser by its name ("evaluate ldm" for nested ones)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[prefix.strip()] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


def test_every_command_is_classified():
    assert set(all_commands()) == set(MODEL_COMMANDS) | set(OTHER_COMMANDS)


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_model_commands_list_device_auto_quiet_and_json(command: str):
    text = all_commands()[command].format_help()
    flat = " ".join(text.split())
    assert "--device DEVICE" in text and "(default: auto" in flat, flat
    assert "--quiet" in text and "no progress bars" in flat
    assert "--json" in text and "one JSON object" in flat


@pytest.mark.parametrize("command", sorted(OTHER_COMMANDS))
def test_other_commands_have_their_flags(command: str):
    text = all_commands()[command].format_help()
    for flag in OTHER_COMMANDS[command]:
        assert flag in text


def test_one_vocabulary_in_help():
    """Training steps, sampling steps and counts have one name each; old names are hidden."""
    commands = all_commands()
    for name in ("train-autoencoder", "train-ldm", "train-sr", "train-inpaint"):
        text = commands[name].format_help()
        assert "--train-steps" in text and "--sample-steps" not in text
        assert "--steps " not in text and "--config FILE" in text
    for name in (
        "sample",
        "superres",
        "inpaint",
        "evaluate ldm",
        "evaluate sr",
        "evaluate inpaint",
    ):
        text = commands[name].format_help()
        assert "--sample-steps" in text and "--train-steps" not in text and "--steps " not in text
    text = commands["evaluate autoencoder"].format_help()
    assert "--n N" in text and "--limit" not in text


def test_perceptual_choices_are_the_packages():
    from ldm_mini.perceptual import BACKBONES

    assert PERCEPTUAL_BACKBONES == BACKBONES


def test_old_flag_names_still_work_and_say_the_new_one(capsys):
    argv = ["train-ldm", "--preset", "tiny", "--out", "unused", "--print-config"]
    assert main([*argv, "--train-steps", "7"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert main([*argv, "--steps", "7"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == new and new["train"]["steps"] == 7
    assert captured.err.strip() == "ldm-mini: note: --steps is now --train-steps"
    args = build_parser().parse_args(
        ["evaluate", "autoencoder", "--checkpoint", "x", "--limit", "5"]
    )
    assert args.n == 5
    args = build_parser().parse_args(["sample", "--checkpoint", "x", "--steps", "3"])
    assert args.sample_steps == 3


def test_config_file_round_trip(tmp_path: Path, capsys):
    argv = ["train-ldm", "--out", str(tmp_path / "run"), "--print-config"]
    assert main([*argv, "--preset", "tiny", "--set", "optim.lr=0.002"]) == 0
    printed = capsys.readouterr().out
    config_file = tmp_path / "config.json"
    config_file.write_text(printed)
    assert main([*argv, "--config", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)
    # an edited file is taken as it is, and flags still apply on top
    edited = json.loads(printed)
    edited["train"]["batch_size"] = 3
    config_file.write_text(json.dumps(edited))
    assert main([*argv, "--config", str(config_file), "--train-steps", "9"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"]["batch_size"] == 3 and result["train"]["steps"] == 9
    assert result["optim"]["lr"] == 0.002


@pytest.mark.parametrize(
    ("content", "extra", "fragment"),
    [
        (None, [], "no such file"),
        ("{not json", [], "is not a JSON config"),
        ("[1, 2]", [], "is not a ldm config"),
        ("AUTOENCODER", [], "write one with `ldm-mini train-ldm --print-config > FILE`"),
        ("LDM", ["--preset", "cpu"], "give --preset NAME or --config FILE, not both"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path: Path, capsys, content, extra, fragment):
    from ldm_mini.configs import load_preset
    from ldm_mini.stages.ldm import load_ldm_preset

    config_file = tmp_path / "config.json"
    if content == "AUTOENCODER":
        content = json.dumps(load_preset("autoencoder", "tiny"))
    elif content == "LDM":
        content = json.dumps(load_ldm_preset("tiny"))
    if content is not None:
        config_file.write_text(content)
    run = tmp_path / "run"
    argv = ["train-ldm", "--out", str(run), "--config", str(config_file), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err
    assert not run.exists()


def test_sample_out_dir_writes_one_png_per_sample(tmp_path: Path, capsys, one_thread):
    from PIL import Image

    folder = tmp_path / "samples"
    argv = ["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--sample-steps", "2",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*argv, "--n", "64", "--batch-size", "24", "--out-dir", str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no bars, no notes
    report = json.loads(captured.out)
    assert report["n"] == 64 and report["batch_size"] == 24 and report["written"] == [str(folder)]
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 64 and pngs[0].name == "00000.png" and pngs[-1].name == "00063.png"
    with Image.open(pngs[5]) as image:
        assert image.size == (32, 32) and image.mode == "L"
    index = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [entry["file"] for entry in index] == [p.name for p in pngs]
    assert [entry["label"] for entry in index[:12]] == [*range(10), 0, 1]
    # the folder must be new or empty: nothing is replaced
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main([*argv, "--n", "2", "--out-dir", str(folder)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert main([*argv, "--n", "2"]) == 2
    assert "give --out GRID.png, --out-dir DIR" in capsys.readouterr().err
    assert main([*argv, "--n", "2", "--batch-size", "0", "--out-dir", str(tmp_path / "b")]) == 2
    assert "--batch-size must be a positive number" in capsys.readouterr().err


def test_without_quiet_long_work_shows_progress_on_stderr(tmp_path: Path, capsys, one_thread):
    argv = ["sample", "--checkpoint", "shipped:fashion_mnist_ldm_class", "--sample-steps", "2",
            "--n", "4", "--batch-size", "2", "--out", str(tmp_path / "g.png")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "device: " in captured.err and "samples" in captured.err and "DDIM" in captured.err
    assert captured.out.startswith("wrote ")


def test_evaluate_autoencoder_json_and_progress(capsys, one_thread):
    argv = ["evaluate", "autoencoder", "--checkpoint", "shipped:fashion_mnist_kl_f4", "--n", "8",
            "--device", "cpu", "--json"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["n"] == 8 and result["perceptual_backbone"] == "efficientnet-lite0"
    assert "reconstructions" in captured.err and "features" in captured.err
    assert main([*argv, "--quiet", "--no-fd"]) == 0
    assert capsys.readouterr().err == ""


def test_quiet_silences_the_libraries_bars_too(tmp_path: Path):
    """On a cold cache, datasets prints 'Generating test split' bars: --quiet hides them."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ldm_mini", "evaluate", "autoencoder", "--json", "--checkpoint",
            "shipped:fashion_mnist_kl_f4", "--n", "4", "--no-fd", "--device", "cpu"]  # fmt: skip
    for cache, extra in ((tmp_path / "a", []), (tmp_path / "b", ["--quiet"])):
        env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        run = subprocess.run([*argv, *extra], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and json.loads(run.stdout)["n"] == 4
        if extra:
            assert run.stderr == ""
        else:
            assert "Generating test split" in run.stderr and "reconstructions" in run.stderr
