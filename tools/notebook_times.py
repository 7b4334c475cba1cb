"""The notebooks' run times: one source, written into every place that quotes them.

The source is ``notebooks/times.json``: for each notebook, the seconds of its last full-mode
run on the course's 2-core development CPU, as the notebook itself printed it in its last cell
("notebook 08 ran in 595 s (full mode, threads: 2)"), and how it ran. From it this tool writes
the time column of three tables: the course map in notebook 00, the README's notebook table and
the instructor guide's table (``docs/instructors.md``). ``tests/test_course_text.py`` fails when
one of them disagrees with the source.

    python tools/notebook_times.py record notebooks/08_super_resolution.ipynb   # after a full run
    python tools/notebook_times.py record NB --how "1 thread, beside a training job"
    python tools/notebook_times.py write     # rewrite the three tables from the source
    python tools/notebook_times.py check     # exit 1 if a table disagrees with the source
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "times.json"
STANDARD = "2 threads, alone"  # how a time is measured unless its entry says otherwise
# where the times are quoted: (file, the column's header)
README = (ROOT / "README.md", "CPU, full run")
GUIDE = (ROOT / "docs" / "instructors.md", "full run on a 2-core CPU")
COURSE_MAP = (ROOT / "notebooks" / "00_setup_and_data.ipynb", "CPU, full run")
RAN_IN = re.compile(r"notebook (\d\d) ran in (\d+) s \((full|quick) mode(?:, threads: (\d+))?\)")


def load_times(path: Path = SOURCE) -> dict[str, dict]:
    """The source: {notebook name: {"seconds": int, "how": str}}."""
    return json.loads(path.read_text(encoding="utf-8"))


def format_time(entry: dict) -> str:
    """'93 s', '9.9 min' or '23 min', then how it ran when that is not the standard."""
    seconds = entry["seconds"]
    if seconds < 120:
        text = f"{seconds} s"
    elif seconds < 600:
        text = f"{seconds / 60:.1f} min"
    else:
        text = f"{round(seconds / 60)} min"
    return text if entry["how"] == STANDARD else f"{text} ({entry['how']})"


def measured_time(notebook: Path) -> tuple[int, int | None]:
    """(seconds, threads) from a full-mode run's last output line 'notebook NN ran in ...'."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for cell in reversed(cells):
        for output in cell.get("outputs", []):
            match = RAN_IN.search("".join(output.get("text", "")))
            if match:
                if match.group(3) != "full":
                    raise SystemExit(
                        f"{notebook.name} was last run in quick mode: run it in full mode first"
                    )
                return int(match.group(2)), int(match.group(4)) if match.group(4) else None
    raise SystemExit(f"{notebook.name} has no 'notebook NN ran in N s' output: execute it first")


def _rewrite_table(text: str, header: str, times: dict[str, dict]) -> str:
    """Set the ``header`` column of the Markdown table rows that name a notebook."""
    lines = text.split("\n")
    column = None
    for index, line in enumerate(lines):
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header in cells:
            column = cells.index(header)
            continue
        if column is None:
            continue
        name = next((n for n in times if n in cells[0]), None)
        if name is not None:
            cells[column] = format_time(times[name])
            lines[index] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines)


def _documents(times: dict[str, dict]) -> list[tuple[Path, str, str, Callable[[], None]]]:
    """(path, current text, text with the times written, a function that saves that text)
    for the three places; each file is read once."""
    out = []
    for path, header in (README, GUIDE):
        text = path.read_text(encoding="utf-8")
        new = _rewrite_table(text, header, times)
        out.append(
            (path, text, new, lambda path=path, new=new: path.write_text(new, encoding="utf-8"))
        )
    path, header = COURSE_MAP
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cell = next(
        c
        for c in notebook["cells"]
        if c["cell_type"] == "markdown" and header in "".join(c["source"])
    )
    text = "".join(cell["source"])
    new = _rewrite_table(text, header, times)

    def save_notebook() -> None:
        cell["source"] = new.splitlines(keepends=True)
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    out.append((path, text, new, save_notebook))
    return out


def disagreements(times: dict[str, dict] | None = None) -> list[str]:
    """The places whose table differs from the source (empty when all agree)."""
    times = load_times() if times is None else times
    return [str(path.relative_to(ROOT)) for path, old, new, _ in _documents(times) if old != new]


def write(times: dict[str, dict]) -> None:
    for path, old, new, save in _documents(times):
        if old != new:
            save()
            print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser(
        "record", help="store a notebook's last full-mode time in the source"
    )
    record.add_argument("notebook", type=Path)
    record.add_argument("--how", default=None, help=f"how it ran, if not '{STANDARD}'")
    commands.add_parser("write", help="write the times from the source into the three tables")
    commands.add_parser("check", help="exit 1 if a table disagrees with the source")
    args = parser.parse_args(argv)
    times = load_times()
    if args.command == "record":
        if not args.notebook.is_file():
            raise SystemExit(f"no notebook {args.notebook}")
        seconds, threads = measured_time(args.notebook)
        if args.how is None and threads is None:
            raise SystemExit(
                f"{args.notebook.name} did not print its thread count: say how it ran with --how"
            )
        how = args.how or (
            STANDARD if threads == 2 else f"{threads} thread{'s' * (threads > 1)}, alone"
        )
        times[args.notebook.stem] = {"seconds": seconds, "how": how}
        SOURCE.write_text(json.dumps(times, indent=1) + "\n", encoding="utf-8")
        print(f"{args.notebook.stem}: {format_time(times[args.notebook.stem])}")
        write(times)
    elif args.command == "write":
        write(times)
    else:
        wrong = disagreements(times)
        if wrong:
            print(
                f"times differ from {SOURCE.relative_to(ROOT)} in: {', '.join(wrong)}; "
                "run python tools/notebook_times.py write",
                file=sys.stderr,
            )
            return 1
        print("all tables agree with the source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
