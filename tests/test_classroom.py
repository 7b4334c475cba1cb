"""Student notebooks and grading (ldm_mini.classroom, ``ldm-mini classroom``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nbformat
import pytest

from ldm_mini import classroom
from ldm_mini.checks import EXERCISES
from ldm_mini.cli import main

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WITH_EXERCISES = sorted({notebook for notebook, _ in EXERCISES.values()})
PRESENT = [name for name in WITH_EXERCISES if (NOTEBOOKS / f"{name}.ipynb").exists()]


def _cell(kind: str, source: str, outputs: list | None = None) -> dict:
    cell = {"cell_type": kind, "id": uuid.uuid4().hex[:8], "metadata": {}, "source": source}
    if kind == "code":
        cell.update(execution_count=3 if outputs else None, outputs=outputs or [])
    return cell


def _notebook(cells: list[dict]) -> dict:
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


SETUP = "import torch\nfrom ldm_mini import checks\n"
KL_SOLUTION = (
    "def my_kl(mean, logvar):\n"
    "    ### BEGIN SOLUTION\n"
    "    # the closed form\n"
    "    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))\n"
    "    ### END SOLUTION\n"
)
WRONG_KL = (  # the factor 1/2 is missing
    "def my_kl(mean, logvar):\n"
    "    return (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))\n"
)
FILM_SOLUTION = (
    "from einops import rearrange\n\n"
    "def my_film(h, params):\n"
    "    ### BEGIN SOLUTION\n"
    "    scale, shift = rearrange(params, 'b c -> b c 1 1').chunk(2, dim=1)\n"
    "    return h * (1 + scale) + shift\n"
    "    ### END SOLUTION\n"
)


def _two_exercises(kl_source: str = KL_SOLUTION) -> dict:
    output = {"output_type": "stream", "name": "stdout", "text": "old output\n"}
    return _notebook(
        [
            _cell("markdown", "# A test notebook"),
            _cell("code", SETUP, [output]),
            _cell("markdown", "**Exercise 1 (the KL term).** Write `my_kl`."),
            _cell("code", kl_source, [output]),
            _cell("code", "checks.check_kl(my_kl)", [output]),
            _cell("code", "raise RuntimeError('a cell that fails between the exercises')"),
            _cell("markdown", "#### Exercise 2: FiLM\n\nWrite `my_film`."),
            _cell("code", FILM_SOLUTION),
            _cell("code", "checks.check_film(my_film)"),
        ]
    )


def test_a_student_notebook_stubs_the_solutions_and_keeps_everything_else():
    solution = _two_exercises()
    student = classroom.make_student_notebook(solution)
    cells = student["cells"]
    assert len(cells) == len(solution["cells"])
    stub = classroom._source(cells[3])
    assert (
        "### BEGIN SOLUTION" not in stub and "0.5 *" not in stub and "the closed form" not in stub
    )
    assert stub.startswith("def my_kl(mean, logvar):\n    # YOUR CODE HERE")
    assert (
        "    raise NotImplementedError('Exercise 1 (the KL term): write the body of my_kl " in stub
    )
    assert "(checks.check_kl)" in stub
    assert "Exercise 2: FiLM: write the body of my_film" in classroom._source(cells[7])
    assert "from einops import rearrange" in classroom._source(cells[7]), (
        "code outside the markers stays"
    )
    assert cells[3]["metadata"]["ldm_mini_exercise"] == "kl"
    # everything else intact, every output cleared, the solution notebook untouched
    for original, new in zip(solution["cells"], cells, strict=True):
        if original["cell_type"] == "markdown" or original is solution["cells"][4]:
            assert new["source"] == original["source"]
        if new["cell_type"] == "code":
            assert new["outputs"] == [] and new["execution_count"] is None
    assert solution["cells"][3]["outputs"], "make_student_notebook does not modify its input"
    compile(stub, "stub", "exec")  # valid Python
    nbformat.validate(nbformat.from_dict(student))


@pytest.mark.parametrize(
    "source, message",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "without '### END SOLUTION'"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
    ],
)
def test_broken_markers_are_reported_with_the_cell(source, message):
    notebook = _notebook([_cell("code", source), _cell("code", "checks.check_kl(f)")])
    with pytest.raises(classroom.ClassroomError, match=message) as error:
        classroom.make_student_notebook(notebook, where="x.ipynb")
    assert "x.ipynb, cell 0" in str(error.value)


def test_a_solution_without_a_check_cell_is_refused():
    notebook = _notebook([_cell("code", KL_SOLUTION), _cell("code", "print('no check here')")])
    with pytest.raises(classroom.ClassroomError, match="no check cell after it"):
        classroom.make_student_notebook(notebook)
    # the next exercise's check does not count for this one
    two = _notebook([_cell("code", KL_SOLUTION), _cell("code", FILM_SOLUTION),
                     _cell("code", "checks.check_film(my_film)")])  # fmt: skip
    with pytest.raises(classroom.ClassroomError, match="cell 0: a solution with no check cell"):
        classroom.make_student_notebook(two)


def test_bad_paths_and_corrupt_files(tmp_path):
    with pytest.raises(classroom.ClassroomError, match="no such notebook or folder"):
        classroom.make_student(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(classroom.ClassroomError, match="has no .ipynb notebooks"):
        classroom.make_student(tmp_path / "empty", tmp_path / "out")
    corrupt = tmp_path / "bad" / "01.ipynb"
    corrupt.parent.mkdir()
    corrupt.write_text('{"cells": [', encoding="utf-8")
    with pytest.raises(classroom.ClassroomError, match="not a valid notebook"):
        classroom.make_student(corrupt.parent, tmp_path / "out")
    good = tmp_path / "src" / "a.ipynb"
    good.parent.mkdir()
    good.write_text(json.dumps(_two_exercises()), encoding="utf-8")
    with pytest.raises(classroom.ClassroomError, match="solutions' own folder"):
        classroom.make_student(good.parent, good.parent)
    assert (
        main(["classroom", "make-student", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
        == 2
    )


@pytest.fixture(scope="module")
def student_course(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    written = classroom.make_student(NOTEBOOKS, out)
    assert [p.name for p in written] == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    return out


def test_the_course_has_two_to_four_exercises_per_notebook_matching_the_checkers(student_course):
    assert PRESENT, "no notebook with exercises found"
    for name in PRESENT:
        solution = classroom.read_notebook(NOTEBOOKS / f"{name}.ipynb")
        expected = [key for key, (notebook, _) in EXERCISES.items() if notebook == name]
        assert classroom.exercise_names(solution) == expected, name
        solutions = [c for c in solution["cells"] if classroom.is_solution_cell(c)]
        assert len(solutions) == len(expected), f"{name}: one solution cell per exercise"
        student = classroom.read_notebook(student_course / f"{name}.ipynb")
        nbformat.validate(nbformat.from_dict(student))
        text = json.dumps(student)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        stubs = [c for c in student["cells"] if classroom.is_solution_cell(c)]
        assert [c["metadata"]["ldm_mini_exercise"] for c in stubs] == expected
        assert all("raise NotImplementedError(" in classroom._source(c) for c in stubs)
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
        assert "widgets" not in student["metadata"], f"{name}: stored widget state"
        assert not any("execution" in c["metadata"] for c in student["cells"]), (
            f"{name}: timestamps"
        )
        assert leaked_answer_lines(solution, student) == [], f"{name}: an answer below an exercise"


def solution_lines(notebook: dict) -> set[str]:
    """The substantial code lines between the solution markers (no comments, no short lines)."""
    lines: set[str] = set()
    for cell in notebook["cells"]:
        inside = False
        for line in classroom._source(cell).splitlines():
            stripped = line.strip()
            if "### BEGIN SOLUTION" in stripped or "### END SOLUTION" in stripped:
                inside = "BEGIN" in stripped
            elif inside and len(stripped) >= 25 and not stripped.startswith("#"):
                lines.add(stripped)
    return lines


def leaked_answer_lines(solution: dict, student: dict) -> list[str]:
    """Solution lines that a student notebook still shows somewhere (verbatim)."""
    answers = solution_lines(solution)
    shown = {
        line.strip() for cell in student["cells"] for line in classroom._source(cell).splitlines()
    }
    return sorted(answers & shown)


def test_an_answer_left_in_a_student_notebook_is_found():
    solution = _two_exercises()
    student = classroom.make_student_notebook(solution)
    assert leaked_answer_lines(solution, student) == []
    answer = next(iter(solution_lines(solution)))
    student["cells"].append(_cell("code", f"# two cells below the exercise\n{answer}\n"))
    assert leaked_answer_lines(solution, student) == [answer]


def test_every_stub_fails_its_check_and_the_solutions_get_full_marks(student_course):
    """Graded as CI grades them: setup, exercise and check cells only (seconds per notebook)."""
    for name in PRESENT:
        students = classroom.grade(student_course / f"{name}.ipynb", only_exercises=True)
        solutions = classroom.grade(NOTEBOOKS / f"{name}.ipynb", only_exercises=True)
        expected = [key for key, (notebook, _) in EXERCISES.items() if notebook == name]
        assert solutions["score"] == solutions["out_of"] == len(expected), solutions
        assert students["score"] == 0 and students["out_of"] == len(expected), students
        for result in students["notebooks"][0]["exercises"]:
            assert "ExerciseNotImplemented" in result["feedback"], result
            assert f"{result['name']} is not implemented yet" in result["feedback"], result
            assert "write the body of " in result["feedback"], result
            assert f"(checks.check_{result['name']})" in result["feedback"], result


def test_grading_runs_every_cell_past_failures_and_scores_each_exercise(tmp_path, capfd):
    folder = tmp_path / "returned"
    folder.mkdir()
    (folder / "alice.ipynb").write_text(json.dumps(_two_exercises(WRONG_KL)), encoding="utf-8")
    (folder / "bob.ipynb").write_text(json.dumps(_two_exercises()), encoding="utf-8")
    assert main(["classroom", "grade", str(folder), "--json"]) == 0
    captured = capfd.readouterr()  # the kernels' own output too
    assert "TCP" not in captured.err, captured.err  # local sockets: no unencrypted-TCP warning
    assert sorted(p.name for p in folder.iterdir()) == ["alice.ipynb", "bob.ipynb"]  # nothing left
    result = json.loads(captured.out)
    alice, bob = result["notebooks"]
    assert (alice["notebook"], alice["score"], alice["out_of"]) == ("alice.ipynb", 1, 2)
    assert (
        not alice["exercises"][0]["passed"]
        and "factor 1/2 is missing" in alice["exercises"][0]["feedback"]
    )
    assert alice["exercises"][1] == {"name": "film", "passed": True, "feedback": ""}
    assert (bob["score"], bob["out_of"]) == (2, 2)
    assert (result["score"], result["out_of"]) == (3, 4)
    assert main(["classroom", "grade", str(folder / "alice.ipynb")]) == 0
    report = capfd.readouterr().out
    assert "alice.ipynb: 1/2" in report and "FAIL kl" in report and "total: 1/2" in report


def test_a_removed_or_replaced_check_scores_zero_as_missing(tmp_path, capsys):
    solution = tmp_path / "solutions" / "course.ipynb"
    solution.parent.mkdir()
    notebook = _two_exercises()
    notebook["metadata"]["widgets"] = {"state": {"a": 1}}  # stored widget state
    notebook["cells"][1]["metadata"]["execution"] = {"iopub.status.busy": "2026-12-07T10:00"}
    solution.write_text(json.dumps(notebook), encoding="utf-8")
    student_dir = tmp_path / "student"
    (student,) = classroom.make_student(solution, student_dir)
    made = json.loads(student.read_text())
    assert made["metadata"]["ldm_mini_checks"] == ["kl", "film"]
    assert "widgets" not in made["metadata"]
    assert all("execution" not in cell["metadata"] for cell in made["cells"])
    # the learner solves both, then replaces the film check by a print
    filled = _two_exercises()
    filled["metadata"] = made["metadata"]
    filled["cells"][8]["source"] = "print('looks fine to me')"
    student.write_text(json.dumps(filled), encoding="utf-8")
    assert main(["classroom", "grade", str(student), "--json", "--exercises-only"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["score"], result["out_of"]) == (1, 2)
    missing = result["notebooks"][0]["exercises"][1]
    assert missing["name"] == "film" and not missing["passed"]
    assert missing["feedback"].startswith("check missing")
    # without the recorded list, the solutions folder says what is expected
    del filled["metadata"]["ldm_mini_checks"]
    student.write_text(json.dumps(filled), encoding="utf-8")
    assert main(["classroom", "grade", str(student), "--json", "--exercises-only"]) == 0
    assert json.loads(capsys.readouterr().out)["out_of"] == 1  # nothing to compare with
    assert main(["classroom", "grade", str(student), "--json", "--exercises-only",
                 "--solutions", str(solution.parent)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["out_of"] == 2
