"""The course speaks of the course: no words from how it was made in what learners read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# what learners read besides the notebooks: the README and the shipped models' cards
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "data" / "checkpoints").glob("*/README.md"))]
# words from the workplace, not from the course: issue numbers, "bars", borrowed machines
OUTSIDE_WORDS = re.compile(
    r"\bissue\s*#?\d+|\bthe issue'?s?\b|\bissue'?s bar\b|\b(?:the|a|its|our) bar\b"
    r"|\bbars? (?:of|for) (?:the|this) issue|\blent\b|\bthis session\b|\bsubagent|\bhelper agent",
    re.IGNORECASE,
)


def outside_words(text: str) -> list[str]:
    return [match.group(0) for match in OUTSIDE_WORDS.finditer(text)]


def test_the_word_check_catches_workplace_words_and_spares_the_course():
    assert outside_words("within 10% (the issue's bar)") == ["the issue's"]
    assert outside_words("this is issue 8's bar") == ["issue 8"]
    assert outside_words("trained on a lent H100") == ["lent"]
    assert outside_words("see issue 8") == ["issue 8"]
    # the course's own words: bar charts, alpha-bar, error bars, a progress bar
    assert outside_words(r"look for the bars to follow the curve, $\bar\alpha_t$, error bars") == []
    assert outside_words("axis.bar(names, counts); the progress bar") == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_markdown_speaks_of_the_course(notebook: Path):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found = {
        index: outside_words("".join(cell["source"]))
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
    }
    assert not {i: words for i, words in found.items() if words}, "cells with outside words"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.parent.name or path.name)
def test_readme_and_cards_speak_of_the_course(document: Path):
    assert outside_words(document.read_text(encoding="utf-8")) == []
