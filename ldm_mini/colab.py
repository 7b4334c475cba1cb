"""Open-in-Colab links and the clone URL of the notebooks' setup cell, from one repository URL.

The repository's URL lives in one place, ``[project.urls] Repository`` of ``pyproject.toml``.
From it ``python tools/colab_links.py write`` puts an "Open in Colab" badge at the top of each
notebook's first cell and in the README, and writes ``REPO_URL = "..."`` into each notebook's
setup cell (what Colab clones and installs); ``python tools/colab_links.py check`` (and a test)
says where they differ. Instructors who hand out a fork write the fork's links into the student
notebooks with ``ldm-mini classroom make-student notebooks --out student --repo-url URL``.
Notebook 00_setup_and_data opens with this setup cell.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_PATTERN = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\n*")
REPO_URL_LINE = re.compile(r'^REPO_URL = "[^"]*"$', re.M)
_GITHUB = re.compile(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?")

__all__ = [
    "badge",
    "clone_url",
    "colab_url",
    "link_problems",
    "project_url",
    "set_links",
]


def _github_parts(repo_url: str) -> tuple[str, str]:
    """(owner, repository) of a GitHub URL, or a clear error (Colab opens notebooks from GitHub)."""
    match = _GITHUB.fullmatch(repo_url.strip())
    if match is None:
        raise ValueError(
            f"{repo_url!r} is not a GitHub repository URL such as "
            "https://github.com/ORG/REPO: Colab opens notebooks from GitHub"
        )
    return match.group(1), match.group(2)


def project_url(pyproject: str | Path | None = None) -> str:
    """The repository's URL: ``[project.urls] Repository`` of ``pyproject`` (default: the
    checkout's ``pyproject.toml``; an installed package reads its own metadata)."""
    path = Path(pyproject) if pyproject else Path(__file__).parents[1] / "pyproject.toml"
    if path.is_file():
        section = re.search(r"^\[project\.urls\]\n(.*?)(?:^\[|\Z)", path.read_text(), re.M | re.S)
        found = section and re.search(r'^Repository\s*=\s*"([^"]+)"', section.group(1), re.M)
        if not found:
            raise ValueError(f'{path} has no Repository = "..." under [project.urls]')
        return found.group(1)
    for entry in metadata.metadata("ldm-mini").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    raise ValueError("the installed ldm-mini has no Repository URL in its metadata")


def clone_url(repo_url: str) -> str:
    """What ``git clone`` takes: https://github.com/ORG/REPO.git."""
    owner, name = _github_parts(repo_url)
    return f"https://github.com/{owner}/{name}.git"


def colab_url(repo_url: str, notebook: str, branch: str = "main") -> str:
    """The URL that opens ``notebook`` (a path inside the repository) of ``branch`` in Colab."""
    owner, name = _github_parts(repo_url)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/{notebook}"


def badge(repo_url: str, notebook: str, branch: str = "main") -> str:
    """The Markdown of an "Open in Colab" badge for ``notebook``."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(repo_url, notebook, branch)})"


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _set_source(cell: dict[str, Any], text: str) -> None:
    lines = text.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _setup_cell(notebook: dict[str, Any]) -> dict[str, Any] | None:
    """The first code cell that sets ``REPO_URL`` (the Colab setup cell), if any."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code" and REPO_URL_LINE.search(_source(cell)):
            return cell
    return None


def set_links(
    notebook: dict[str, Any], path_in_repo: str, repo_url: str, branch: str = "main"
) -> dict[str, Any]:
    """Write the badge (top of the first cell, a Markdown cell) and the setup cell's clone URL
    for ``repo_url`` into ``notebook`` (changed in place and returned). ``path_in_repo``: where
    the notebook lies in the repository, e.g. ``notebooks/06_latent_diffusion.ipynb``."""
    cells = notebook.get("cells", [])
    if not cells or cells[0].get("cell_type") != "markdown":
        raise ValueError(
            f"{path_in_repo}: the first cell must be Markdown (the title) to hold the badge"
        )
    setup = _setup_cell(notebook)
    if setup is None:
        raise ValueError(
            f'{path_in_repo}: no setup cell with a line REPO_URL = "..." to write into'
        )
    title = BADGE_PATTERN.sub("", _source(cells[0]))
    _set_source(cells[0], f"{badge(repo_url, path_in_repo, branch)}\n\n{title}")
    _set_source(setup, REPO_URL_LINE.sub(f'REPO_URL = "{clone_url(repo_url)}"', _source(setup)))
    return notebook


def link_problems(
    notebook: dict[str, Any], path_in_repo: str, repo_url: str, branch: str = "main"
) -> list[str]:
    """What differs from :func:`set_links`' result (empty: the links are right)."""
    expected = set_links(_copy(notebook), path_in_repo, repo_url, branch)
    problems = []
    if _source(notebook["cells"][0]) != _source(expected["cells"][0]):
        problems.append(f"{path_in_repo}: the first cell does not start with its Colab badge")
    if _source(_setup_cell(notebook) or {}) != _source(_setup_cell(expected) or {}):
        problems.append(f"{path_in_repo}: the setup cell's REPO_URL is not {clone_url(repo_url)}")
    return problems


def _copy(notebook: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(notebook)
