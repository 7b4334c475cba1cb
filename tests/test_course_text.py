"""The course speaks of the course: no words from how it was made in what learners read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from shrink_notebook import WIDGET_VIEW  # tools/, on the path through conftest.py

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


# -- what the committed notebooks store: small, readable on the web ---------------------------

MAX_NOTEBOOK_BYTES = 2_000_000


def stored_noise(notebook: dict) -> list[str]:
    """What a committed notebook must not store: widget state, widget views (progress bars
    that show stuck on the web), JavaScript animations."""
    found = []
    if "widgets" in notebook.get("metadata", {}):
        found.append("widget state in the notebook's metadata")
    for index, cell in enumerate(notebook["cells"]):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                found.append(f"cell {index}: a widget view")
            if "<script" in "".join(data.get("text/html", "")):
                found.append(f"cell {index}: JavaScript in an HTML output")
    return found


def test_stored_noise_is_found():
    clean = {
        "metadata": {},
        "cells": [{"cell_type": "code", "outputs": [{"data": {"image/png": "x"}}]}],
    }
    assert stored_noise(clean) == []
    noisy = {
        "metadata": {"widgets": {"state": {}}},
        "cells": [{"cell_type": "code", "outputs": [
            {"data": {WIDGET_VIEW: {"model_id": "1"}, "text/plain": "  0%|  | 0/1500"}},
            {"data": {"text/html": ["<div id='anim'></div>\n", "<script>animate()</script>"]}},
        ]}],
    }  # fmt: skip
    assert stored_noise(noisy) == [
        "widget state in the notebook's metadata", "cell 0: a widget view",
        "cell 0: JavaScript in an HTML output",
    ]  # fmt: skip


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_is_small_and_stores_no_widgets_or_scripts(notebook: Path):
    size = notebook.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{notebook.name} is {size / 1e6:.2f} MB (at most 2 MB)"
    assert stored_noise(json.loads(notebook.read_text(encoding="utf-8"))) == []


# -- the notebooks' run times: one source, quoted the same everywhere -------------------------


def test_notebook_times_agree_with_their_source():
    from notebook_times import disagreements, load_times

    times = load_times()
    assert sorted(times) == [path.stem for path in NOTEBOOKS], "every notebook needs a time"
    assert disagreements(times) == [], "run python tools/notebook_times.py write"
    # and the check sees a change of the source
    changed = {
        **times,
        "05_unet": {**times["05_unet"], "seconds": times["05_unet"]["seconds"] + 600},
    }
    assert len(disagreements(changed)) == 3


def test_notebook_time_is_read_from_the_notebook_and_formatted(tmp_path: Path):
    from notebook_times import format_time, measured_time

    assert format_time({"seconds": 93, "how": "2 threads, alone"}) == "93 s"
    assert format_time({"seconds": 595, "how": "2 threads, alone"}) == "9.9 min"
    assert (
        format_time({"seconds": 1361, "how": "1 thread, beside a job"})
        == "23 min (1 thread, beside a job)"
    )
    cell = {
        "cell_type": "code",
        "outputs": [{"text": ["notebook 05 ran in 88 s (full mode, threads: 2)\n"]}],
    }
    path = tmp_path / "05_unet.ipynb"
    path.write_text(json.dumps({"cells": [cell]}))
    assert measured_time(path) == (88, 2)
    cell["outputs"][0]["text"] = ["notebook 05 ran in 8 s (quick mode, threads: 1)\n"]
    path.write_text(json.dumps({"cells": [cell]}))
    with pytest.raises(SystemExit, match="quick mode"):
        measured_time(path)


def test_shrinking_a_notebook_keeps_every_pixel_and_drops_widgets():
    import base64
    import io

    import numpy as np
    from PIL import Image
    from shrink_notebook import shrink_notebook

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def png(array: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([array, np.full((32, 32, 1), 255, np.uint8)], axis=2)).save(
            buffer, "PNG"
        )
        return base64.b64encode(buffer.getvalue()).decode()

    notebook = {"metadata": {"widgets": {"state": {}}}, "cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": {WIDGET_VIEW: {"id": "1"}, "text/plain": "0/9"}},
        {"output_type": "display_data", "data": {"image/png": png(grey)}},
        {"output_type": "display_data", "data": {"image/png": png(colour)}},
    ]}]}  # fmt: skip
    before = [notebook["cells"][0]["outputs"][i]["data"]["image/png"] for i in (1, 2)]
    shrunk = shrink_notebook(notebook)
    assert stored_noise(shrunk) == [] and len(shrunk["cells"][0]["outputs"]) == 2
    for output, original, array in zip(
        shrunk["cells"][0]["outputs"], before, (grey, colour), strict=True
    ):
        image = Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
        assert np.array_equal(np.asarray(image.convert("RGB")), array)  # not one pixel changed
        assert len(output["data"]["image/png"]) <= len(original)
    assert (
        Image.open(
            io.BytesIO(base64.b64decode(shrunk["cells"][0]["outputs"][0]["data"]["image/png"]))
        ).mode
        == "L"
    )
