"""Write or check the "Open in Colab" badges and the setup cells' clone URL, from pyproject's
``[project.urls] Repository`` (see ``ldm_mini/colab.py``).

    python tools/colab_links.py write    # every notebook's first and setup cells, the README
    python tools/colab_links.py check    # exit 1, naming each place that differs

The README's badges sit between ``<!-- colab-badges -->`` and ``<!-- /colab-badges -->``: one
per notebook. ``tests/test_course_text.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldm_mini.colab import badge, link_problems, project_url, set_links  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
README = ROOT / "README.md"
BEGIN, END = "<!-- colab-badges -->", "<!-- /colab-badges -->"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def readme_block(repo_url: str) -> str:
    """One line per notebook: its badge and its name."""
    lines = [f"{badge(repo_url, f'notebooks/{path.name}')} {path.stem}" for path in notebooks()]
    return BEGIN + "\n" + "<br>\n".join(lines) + "\n" + END


def _readme_with(block: str) -> str:
    text = README.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} block for the badges")
    return text[:start] + block + text[end + len(END) :]


def write(repo_url: str) -> None:
    for path in notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        set_links(notebook, f"notebooks/{path.name}", repo_url)
        text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
        if text != path.read_text(encoding="utf-8"):
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    text = _readme_with(readme_block(repo_url))
    if text != README.read_text(encoding="utf-8"):
        README.write_text(text, encoding="utf-8")
        print(f"wrote {README.relative_to(ROOT)}")


def problems(repo_url: str) -> list[str]:
    found = []
    for path in notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        found += link_problems(notebook, f"notebooks/{path.name}", repo_url)
    if _readme_with(readme_block(repo_url)) != README.read_text(encoding="utf-8"):
        found.append(f"README.md: the badges between {BEGIN} and {END} are not {repo_url}'s")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "check"])
    args = parser.parse_args(argv)
    repo_url = project_url(ROOT / "pyproject.toml")
    if args.action == "write":
        write(repo_url)
        return 0
    found = problems(repo_url)
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
