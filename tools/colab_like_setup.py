"""Run the notebooks' Colab setup cell in a Colab-like environment, and check what it leaves.

Colab's runtime already has torch and older versions of much of the stack (numpy, pyarrow,
datasets, matplotlib, ...), and its kernel has imported some of them before the first cell
runs. The setup cell (the first code cell of every notebook) clones the repository and runs
``pip install -e``; it must not reinstall torch, must leave a ``datasets``/``pyarrow`` pair that
works, and must not need a runtime restart (no package the kernel already imported may change
on disk under it). This script:

1. builds a virtual environment with torch/torchvision of this machine and the older packages
   of ``COLAB_LIKE`` (from PyPI, or a pip cache);
2. runs, in one Python process of that environment, as a Colab kernel would: imports what
   Colab's kernel has imported (``PREIMPORTED``), makes ``import google.colab`` succeed, runs
   notebook 00's setup cell with ``REPO_URL`` pointing at this checkout (``file://``, so no
   GitHub is needed) and ``/content`` at a temporary folder, then, in the same process, what
   the next cells do: ``import ldm_mini``, load a bundled dataset through ``datasets``/pyarrow,
   build a model;
3. checks that torch's files are untouched, that every module imported before the cell is
   still the version installed on disk, and prints one JSON line with the times.

    python tools/colab_like_setup.py            # about 3 minutes with a warm pip cache
    python tools/colab_like_setup.py --keep /tmp/colab-like   # keep the environment
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# older than what pyproject asks for where it matters (datasets < 4, huggingface_hub < 1),
# as a Colab runtime of 2025 had them
COLAB_LIKE = [
    "numpy==2.0.2",
    "pandas==2.2.2",
    "pyarrow==18.1.0",
    "datasets==3.6.0",
    "huggingface_hub==0.30.2",
    "matplotlib==3.10.0",
    "pillow==11.1.0",
    "tqdm==4.67.1",
    "safetensors==0.5.3",
    "einops==0.8.1",
    "ipykernel",
]
# what a Colab kernel has imported before the first cell (its startup and google.colab's)
PREIMPORTED = ["numpy", "pandas", "matplotlib", "PIL", "tqdm", "IPython"]

KERNEL = r"""
import importlib, json, sys, time, types
from importlib import metadata
from pathlib import Path

preimported = json.loads(sys.argv[1])
for name in preimported:
    importlib.import_module(name)
before = {name: getattr(sys.modules[name], "__version__", None) for name in preimported}
# `import google.colab` must succeed, as on Colab
google = types.ModuleType("google"); google.__path__ = []
colab = types.ModuleType("google.colab")
sys.modules["google"], sys.modules["google.colab"] = google, colab
torch_files = {str(p): p.stat().st_mtime_ns for p in Path(sys.argv[3]).rglob("*.py")}
torch_before = metadata.version("torch")

start = time.perf_counter()
exec(compile(Path(sys.argv[2]).read_text(), "setup cell", "exec"), {"__name__": "__main__"})
setup_seconds = time.perf_counter() - start

# the next cells, in the same process: no restart
start = time.perf_counter()
import torch
import datasets, pyarrow
import ldm_mini
from ldm_mini.data import TensorImageDataset, load_dataset
from ldm_mini.unet import UNet, unet_preset
test = load_dataset("fashion_mnist", split="test")
image = TensorImageDataset(test, image_size=32)[0]["image"]
unet = UNet(unet_preset("tiny", 4))
after_seconds = time.perf_counter() - start

installed = {}
for name in preimported:
    distribution = {"PIL": "pillow", "IPython": "ipython"}.get(name, name)
    installed[name] = metadata.version(distribution)
stale = [f"{name} {before[name]} in memory, {installed[name]} on disk"
         for name in preimported if before[name] and before[name] != installed[name]]
changed = [p for p, mtime in torch_files.items() if Path(p).stat().st_mtime_ns != mtime]
print(json.dumps({
    "setup_cell_seconds": round(setup_seconds, 1),
    "next_cells_seconds": round(after_seconds, 1),
    "torch_before": torch_before, "torch": metadata.version("torch"),
    "torch_files_changed": len(changed),
    "datasets": datasets.__version__, "pyarrow": pyarrow.__version__,
    "ldm_mini_from": str(Path(ldm_mini.__file__).parent),
    "stale_modules": stale, "image": list(image.shape), "test_rows": len(test),
}))
"""


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True, **options)


def setup_cell() -> str:
    """Notebook 00's setup cell (the one with ``REPO_URL``)."""
    notebook = json.loads((ROOT / "notebooks" / "00_setup_and_data.ipynb").read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and 'REPO_URL = "' in source:
            return source
    raise SystemExit("notebook 00 has no setup cell with REPO_URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="build the environment here and keep it")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="colab-like-"))
    if args.keep and work.exists():
        raise SystemExit(f"{work} exists; give a new folder")
    work.mkdir(parents=True, exist_ok=not args.keep)
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        venv = work / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        torch_pins = [f"torch=={metadata.version('torch')}",
                      f"torchvision=={metadata.version('torchvision')}"]  # fmt: skip
        run([python, "-m", "pip", "install", "-q", *torch_pins, *COLAB_LIKE])
        timings["colab_like_environment_seconds"] = round(time.perf_counter() - start, 1)
        torch_dir = run(
            [python, "-c", "import torch, os; print(os.path.dirname(torch.__file__))"]
        ).stdout.strip()

        # the setup cell, cloning this checkout (committed state) into work/content
        content = work / "content"
        cell = setup_cell()
        cell = cell.replace("/content", str(content))
        cell = cell.replace(
            cell[cell.index('REPO_URL = "') : cell.index('"', cell.index('REPO_URL = "') + 12) + 1],
            f'REPO_URL = "file://{ROOT}"',
        )
        content.mkdir()
        (work / "cell.py").write_text(cell)
        (work / "kernel.py").write_text(KERNEL)
        result = run(
            [python, str(work / "kernel.py"), json.dumps(PREIMPORTED), str(work / "cell.py"),
             torch_dir],
            cwd=work,
        )  # fmt: skip
        report = json.loads(result.stdout.strip().splitlines()[-1])
        report.update(timings)
        problems = []
        if report["torch_files_changed"] or report["torch"] != report["torch_before"]:
            problems.append("the setup cell reinstalled torch")
        if report["stale_modules"]:
            problems.append(f"a restart would be needed: {report['stale_modules']}")
        if not report["ldm_mini_from"].startswith(str(content)):
            problems.append(f"ldm_mini imported from {report['ldm_mini_from']}, not the clone")
        report["ok"] = not problems
        report["problems"] = problems
        print(json.dumps(report))
        return 0 if not problems else 1
    except subprocess.CalledProcessError as error:
        print(f"failed: {' '.join(error.cmd[:4])} ...\n{error.stdout}\n{error.stderr}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
