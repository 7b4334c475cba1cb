"""Classroom tooling: student notebooks from the solution notebooks, and automatic grading.

Instructors: ``ldm-mini classroom make-student notebooks --out student`` writes one student
notebook per solution notebook, in which every solution (the lines between ``### BEGIN
SOLUTION`` and ``### END SOLUTION``) is replaced by a stub that raises NotImplementedError
with the exercise's name and instructions, and every output is cleared; everything else (the
text, the check cells, the rest of the code) is kept. ``ldm-mini classroom grade DIR --json``
runs the (returned) notebooks of DIR with nbclient, continuing past errors so that a failing
exercise does not stop the others, and scores every check cell (a cell that calls
``checks.check_NAME(...)``, see :mod:`ldm_mini.checks`): 1 if it ran without error, else 0,
with the first line of the error as feedback. A check that the student notebook should call
(recorded in its metadata when it was made, or found in the solution notebook given with
``--solutions DIR``) but no longer calls scores 0 with the feedback "check missing". The
instructor guide is ``docs/instructors.md``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK_CALL = re.compile(r"\bchecks\.check_(\w+)\s*\(")
EXERCISE_TITLE = re.compile(r"\*\*Exercise[^*]*\*\*|^#+ *Exercise[^\n]*", re.M)


class ClassroomError(ValueError):
    """A notebook that cannot be turned into a student version or graded; says why."""


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def read_notebook(path: str | Path) -> dict[str, Any]:
    """A notebook as a dict (nbformat 4), with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ClassroomError(f"{path}: no such notebook")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClassroomError(
            f"{path} is not a valid notebook (JSON error: {error}); re-download it"
        ) from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise ClassroomError(f"{path} is not a Jupyter notebook (no list of cells)")
    return notebook


def notebooks_in(path: str | Path) -> list[Path]:
    """The notebooks at ``path``: the file itself, or the ``*.ipynb`` of a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ClassroomError(f"{path}: no such notebook or folder")
    found = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
    if not found:
        raise ClassroomError(f"{path} has no .ipynb notebooks")
    return found


def exercise_names(notebook: dict[str, Any]) -> list[str]:
    """The checkers called by the notebook's check cells, in order (e.g. ["q_sample"])."""
    names = []
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            names += CHECK_CALL.findall(_source(cell))
    return names


def _instructions(cells: list[dict[str, Any]], index: int) -> str:
    """The title of the nearest "**Exercise ...**" markdown above cell ``index``, if any."""
    for cell in reversed(cells[:index]):
        if cell.get("cell_type") == "markdown":
            match = EXERCISE_TITLE.search(_source(cell))
            if match:
                return match.group(0).strip("*#").strip().rstrip(".")
    return ""


def _next_check(cells: list[dict[str, Any]], index: int) -> str | None:
    """The checker called by the first check cell from ``index`` on, before the next solution."""
    for cell in cells[index:]:
        if cell.get("cell_type") != "code":
            continue
        found = CHECK_CALL.findall(_source(cell))
        if found:
            return found[0]
        if BEGIN in _source(cell):
            return None  # another exercise starts before this one was checked
    return None


def stub_solution(source: str, name: str, title: str, where: str) -> str:
    """``source`` with each BEGIN/END SOLUTION block replaced by a NotImplementedError stub at
    the block's indentation (the markers' own lines are dropped)."""
    lines = source.split("\n")
    out: list[str] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ClassroomError(f"{where}: nested {BEGIN!r} at line {number}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            label = f"{title}: " if title else ""
            # the function whose body this is: the last "def NAME(" above the marker
            defined = re.findall(r"^\s*def (\w+)\(", "\n".join(lines[: number - 1]), re.M)
            what = f"the body of {defined[-1]}" if defined else "the solution"
            message = (
                f"{label}write {what} (see the instructions above), then run the check "
                f"cell below (checks.check_{name})"
            )
            out.append(f"{indent}# YOUR CODE HERE: replace the next line with your solution")
            out.append(f"{indent}raise NotImplementedError({message!r})")
        elif stripped == END:
            if not inside:
                raise ClassroomError(f"{where}: {END!r} without {BEGIN!r} at line {number}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ClassroomError(f"{where}: {BEGIN!r} without {END!r}")
    return "\n".join(out)


def make_student_notebook(notebook: dict[str, Any], where: str = "notebook") -> dict[str, Any]:
    """The student version of a solution notebook: solutions stubbed, outputs cleared.

    Every solution cell must be followed (before the next solution) by a check cell calling
    ``checks.check_NAME``; a notebook without exercises is returned with outputs cleared.
    """
    student = copy.deepcopy(notebook)
    cells = student["cells"]
    student.setdefault("metadata", {}).pop("widgets", None)  # stored widget state
    for index, cell in enumerate(cells):
        cell.get("metadata", {}).pop("execution", None)  # execution timestamps
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = []
        cell["execution_count"] = None
        source = _source(cell)
        if BEGIN not in source and END not in source:
            continue
        name = _next_check(cells, index + 1)
        if name is None:
            raise ClassroomError(
                f"{where}, cell {index}: a solution with no check cell after it; add a cell "
                "calling checks.check_NAME(your_function) so students get feedback"
            )
        title = _instructions(cells, index)
        cell["source"] = stub_solution(source, name, title, f"{where}, cell {index}")
        cell.setdefault("metadata", {})["ldm_mini_exercise"] = name
    student["metadata"]["ldm_mini_student"] = True
    # the checks the grader expects: a removed or replaced check cell then scores 0
    student["metadata"]["ldm_mini_checks"] = exercise_names(notebook)
    return student


def write_notebook(notebook: dict[str, Any], path: Path) -> None:
    """Write (nbformat-validated when nbformat is installed) with a trailing newline."""
    try:
        import nbformat

        nbformat.validate(nbformat.from_dict(notebook))
    except ImportError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def make_student(
    source: str | Path,
    out: str | Path,
    repo_url: str | None = None,
    branch: str = "main",
    path_in_repo: str = "notebooks",
) -> list[Path]:
    """Write the student version of every notebook at ``source`` (a notebook or a folder)
    into the folder ``out`` (same file names). Returns the written paths.

    ``repo_url`` (a GitHub repository, e.g. the instructor's fork): each notebook's "Open in
    Colab" badge then opens ``path_in_repo/NAME`` of ``branch`` there, and its setup cell
    clones that repository (:func:`ldm_mini.colab.set_links`)."""
    from ldm_mini.colab import clone_url

    out = Path(out)
    if out.resolve() in {p.parent.resolve() for p in notebooks_in(source)}:
        raise ClassroomError(f"--out {out} is the solutions' own folder: choose another one")
    if repo_url is not None:
        try:
            clone_url(repo_url)
        except ValueError as err:
            raise ClassroomError(f"--repo-url: {err}") from None
    written = []
    for path in notebooks_in(source):
        student = make_student_notebook(read_notebook(path), where=str(path))
        if repo_url is not None:
            from ldm_mini.colab import set_links

            try:
                set_links(student, f"{path_in_repo.strip('/')}/{path.name}", repo_url, branch)
            except ValueError as err:
                raise ClassroomError(str(err)) from None
        target = out / path.name
        write_notebook(student, target)
        written.append(target)
    return written


@dataclass
class ExerciseResult:
    """One check cell's outcome: ``passed`` and, when it failed, the first line of the error."""

    name: str
    passed: bool
    feedback: str = ""


@dataclass
class NotebookGrade:
    notebook: str
    exercises: list[ExerciseResult] = field(default_factory=list)
    error: str = ""  # the notebook could not be run at all
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(result.passed for result in self.exercises)


def _error_of(cell: dict[str, Any]) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".split("\n")[0]
    return None


def is_solution_cell(cell: dict[str, Any]) -> bool:
    """A cell holding an exercise: solution markers, or a student stub made from them."""
    if cell.get("cell_type") != "code":
        return False
    return BEGIN in _source(cell) or "ldm_mini_exercise" in cell.get("metadata", {})


def exercises_only(notebook: dict[str, Any]) -> dict[str, Any]:
    """The notebook reduced to its setup (every code cell up to the one that imports
    ``ldm_mini.checks``), its exercise cells and its check cells: enough to grade the
    exercises in seconds, since the checkers need only the learner's functions."""
    cells = notebook["cells"]
    setup = [
        i
        for i, c in enumerate(cells)
        if c.get("cell_type") == "code"
        and re.search(r"^from ldm_mini import .*\bchecks\b", _source(c), re.M)
    ]
    if not setup:
        raise ClassroomError(
            "no cell imports ldm_mini.checks (from ldm_mini import checks): "
            "cannot tell the setup cells from the rest"
        )
    keep = []
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        if index <= setup[0] or is_solution_cell(cell) or CHECK_CALL.search(_source(cell)):
            keep.append(cell)
    reduced = copy.deepcopy(notebook)
    reduced["cells"] = copy.deepcopy(keep)
    return reduced


MISSING_CHECK = "check missing: no cell calls checks.check_{name} (it was removed or replaced)"


def _kernel_manager(sockets: Path):
    """A python3 kernel that talks over local IPC sockets in ``sockets`` (a private folder)
    where the system has them, so no TCP port is opened and the kernel prints no warning
    about unencrypted TCP; over TCP on Windows."""
    from jupyter_client.manager import KernelManager

    if os.name == "nt":
        return KernelManager(kernel_name="python3")
    return KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "kernel"))


def grade_notebook(
    path: Path,
    timeout: int = 900,
    quick: bool = True,
    only_exercises: bool = False,
    expected: list[str] | None = None,
) -> NotebookGrade:
    """Run one notebook with nbclient (errors do not stop it) and score its check cells;
    ``only_exercises`` runs just the setup, exercise and check cells (:func:`exercises_only`).

    ``expected``: the checks the notebook must call (default: those recorded in a student
    notebook's metadata by :func:`make_student_notebook`); each one it no longer calls scores
    0 with the feedback "check missing"."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise ClassroomError(
            "grading runs notebooks with nbclient: pip install nbclient nbformat ipykernel "
            '(or pip install -e ".[classroom]")'
        ) from None
    started = time.perf_counter()
    content = read_notebook(path)
    if expected is None:
        expected = content.get("metadata", {}).get("ldm_mini_checks")
    # reads() joins the list-of-lines sources that nbclient cannot execute
    notebook = nbformat.reads(
        json.dumps(exercises_only(content) if only_exercises else content), as_version=4
    )
    grade = NotebookGrade(notebook=path.name)
    environment = dict(os.environ)
    if quick:
        environment["LDM_MINI_QUICK"] = "1"
    else:
        environment.pop("LDM_MINI_QUICK", None)
    with tempfile.TemporaryDirectory(prefix="ldm-mini-kernel-") as sockets:
        try:
            client = NotebookClient(
                notebook,
                timeout=timeout,
                allow_errors=True,
                km=_kernel_manager(Path(sockets)),
                resources={"metadata": {"path": str(path.parent)}},
            )
            client.execute(env=environment)  # the kernel's environment (quick mode or not)
        except Exception as error:  # a dead kernel or a timeout: the rest cannot be scored
            grade.error = f"{type(error).__name__}: {error}".split("\n")[0]
    for cell in notebook.cells:
        if cell.get("cell_type") != "code":
            continue
        for name in CHECK_CALL.findall(_source(cell)):
            executed = cell.get("execution_count") is not None
            error = _error_of(cell)
            if not executed:
                error = grade.error or "not run"
            grade.exercises.append(ExerciseResult(name, error is None, error or ""))
    found = [result.name for result in grade.exercises]
    for name in expected or []:
        if name in found:
            found.remove(name)
        else:
            grade.exercises.append(ExerciseResult(name, False, MISSING_CHECK.format(name=name)))
    grade.seconds = round(time.perf_counter() - started, 1)
    return grade


def grade(
    path: str | Path,
    timeout: int = 900,
    quick: bool = True,
    only_exercises: bool = False,
    solutions: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Grade every notebook at ``path``: per notebook and exercise, passed and feedback, and
    the total score. ``quick`` runs the notebooks in quick mode (LDM_MINI_QUICK=1);
    ``only_exercises`` runs only their setup, exercise and check cells (seconds each).
    ``solutions``: the folder of solution notebooks; a graded notebook must then call every
    check its solution (same file name) calls (else: the checks recorded in its metadata).
    ``progress``: a bar over the notebooks (on stderr)."""
    from tqdm.auto import tqdm

    grades = []
    notebooks = notebooks_in(path)
    bar = tqdm(notebooks, desc="grading", unit="notebook", disable=not progress)
    for notebook in bar:
        bar.set_postfix_str(notebook.name)
        expected = None
        if solutions is not None:
            solution = Path(solutions) / notebook.name
            if not solution.is_file():
                raise ClassroomError(f"no solution notebook {solution} for {notebook.name}")
            expected = exercise_names(read_notebook(solution))
        grades.append(grade_notebook(notebook, timeout=timeout, quick=quick,
                                     only_exercises=only_exercises, expected=expected))  # fmt: skip
    total = sum(len(g.exercises) for g in grades)
    return {
        "notebooks": [
            {
                "notebook": g.notebook,
                "score": g.score,
                "out_of": len(g.exercises),
                "seconds": g.seconds,
                "error": g.error,
                "exercises": [asdict(result) for result in g.exercises],
            }
            for g in grades
        ],
        "score": sum(g.score for g in grades),
        "out_of": total,
    }


def format_grade(result: dict[str, Any]) -> str:
    """A readable report of :func:`grade`'s result."""
    lines = []
    for entry in result["notebooks"]:
        lines.append(
            f"{entry['notebook']}: {entry['score']}/{entry['out_of']}"
            + (f"  (could not finish: {entry['error']})" if entry["error"] else "")
        )
        for exercise in entry["exercises"]:
            mark = "ok  " if exercise["passed"] else "FAIL"
            feedback = "" if exercise["passed"] else "  " + exercise["feedback"]
            lines.append(f"  {mark} {exercise['name']}{feedback}")
    lines.append(f"total: {result['score']}/{result['out_of']}")
    return "\n".join(lines)
