"""One repository URL: the notebooks' and README's Open-in-Colab badges and the setup cells'
clone URL come from pyproject's [project.urls] Repository; make-student rewrites them."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from ldm_mini.classroom import make_student
from ldm_mini.cli import main
from ldm_mini.colab import clone_url, colab_url, link_problems, project_url, set_links

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load_tool():
    spec = importlib.util.spec_from_file_location("colab_links", ROOT / "tools" / "colab_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_url_is_pyprojects():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'Repository = "{project_url()}"' in text
    assert project_url().startswith("https://github.com/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_carries_its_badge_and_clone_url(path: Path):
    url = project_url()
    notebook = json.loads(path.read_text())
    first = source(notebook["cells"][0])
    owner_repo = url.removeprefix("https://github.com/")
    expected = (
        f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name}"
    )
    assert first.startswith("[![Open In Colab](") and f"]({expected})" in first.split("\n")[0]
    setup = [c for c in notebook["cells"] if 'REPO_URL = "' in source(c)]
    assert len(setup) == 1 and f'REPO_URL = "{url}.git"' in source(setup[0])
    assert link_problems(notebook, f"notebooks/{path.name}", url) == []


def test_the_readme_has_every_badge_and_the_check_passes():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab_url(project_url(), f"notebooks/{path.name}") in readme
    assert load_tool().problems(project_url()) == []


def test_the_check_finds_a_wrong_url_and_set_links_repairs_it():
    url = project_url()
    notebook = json.loads(NOTEBOOKS[5].read_text())
    name = f"notebooks/{NOTEBOOKS[5].name}"
    wrong = copy.deepcopy(notebook)
    for cell in wrong["cells"]:
        cell["source"] = [
            line.replace(url.removeprefix("https://github.com/"), "someone/else")
            for line in cell["source"]
        ]
    found = link_problems(wrong, name, url)
    assert len(found) == 2 and "badge" in found[0] and "REPO_URL" in found[1]
    repaired = set_links(wrong, name, url)
    assert repaired["cells"] == notebook["cells"]
    # writing twice changes nothing (the old badge is replaced, not stacked)
    assert set_links(copy.deepcopy(repaired), name, url)["cells"] == notebook["cells"]


def test_make_student_points_the_links_at_a_fork(tmp_path: Path, capsys):
    fork = "https://github.com/teacher/ldm-course"
    argv = ["classroom", "make-student", str(NOTEBOOKS[3]), "--out", str(tmp_path / "s")]
    assert main([*argv, "--repo-url", fork, "--branch", "fall", "--path-in-repo", "student"]) == 0
    student = json.loads((tmp_path / "s" / NOTEBOOKS[3].name).read_text())
    first = source(student["cells"][0])
    assert colab_url(fork, f"student/{NOTEBOOKS[3].name}", "fall") in first.split("\n")[0]
    assert first.count("Open In Colab") == 1
    setup = [c for c in student["cells"] if 'REPO_URL = "' in source(c)][0]
    assert f'REPO_URL = "{clone_url(fork)}"' in source(setup)
    assert "ldm-mini/ldm-mini" not in json.dumps(student)
    # without --repo-url the solutions' links stay
    plain = make_student(NOTEBOOKS[3], tmp_path / "p")[0]
    assert (
        link_problems(
            json.loads(plain.read_text()), f"notebooks/{NOTEBOOKS[3].name}", project_url()
        )
        == []
    )


def test_a_url_colab_cannot_open_is_one_line(tmp_path: Path, capsys):
    argv = ["classroom", "make-student", str(NOTEBOOKS[3]), "--out", str(tmp_path / "s")]
    assert main([*argv, "--repo-url", "https://gitlab.com/teacher/course"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a GitHub repository URL" in err
    assert not (tmp_path / "s").exists()
