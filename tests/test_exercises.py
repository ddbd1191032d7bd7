"""The self-checking exercises (``tutorials/exercises/``, ``scratchvision/exercises.py``,
``scratchvision exercise``): the checker passes every reference solution, reports every
exercise as shipped as not written yet, and catches typical mistakes -- each a small mutation
of a solution -- naming the wrong gradient and the equation to re-read."""

from __future__ import annotations

import ast
import difflib
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from scratchvision import cli, exercises

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tutorials" / "exercises"
SOLUTIONS = FOLDER / "solutions"
NAMES = list(exercises.EXERCISES)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["exercise", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _failed_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("FAILED"))


def test_every_exercise_has_its_file_and_its_solution():
    assert {"bilinear_backward", "conv2d_backward", "deform_conv2d_offset_mask",
            "ms_deform_attn_backward", "fpn_top_down_backward",
            "focal_loss_backward"} <= set(NAMES)
    assert sorted(p.stem for p in FOLDER.glob("*.py")) == sorted(NAMES)
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_checker_passes_the_solution(name, capsys):
    code, out, err = _run(capsys, "check", name, "--file", str(SOLUTIONS / f"{name}.py"))
    assert code == 0, out + err
    assert out.rstrip().splitlines()[-1].startswith("PASSED")
    assert "FAIL" not in out


@pytest.mark.parametrize("name", NAMES)
def test_the_exercise_as_shipped_is_not_written_yet(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default file: ./tutorials/exercises/NAME.py
    code, out, err = _run(capsys, "check", name)
    assert code == 1
    assert "Traceback" not in out + err
    holes = exercises.holes(FOLDER / f"{name}.py")
    assert len(holes) >= 3
    first = next(line for line in out.splitlines() if line.startswith("not written yet: "))
    assert any(f"not written yet: {message} (line {line} of " in first
               for line, message in holes)
    assert f"{len(holes)} holes left in tutorials/exercises/{name}.py" in out
    for line, message in holes:
        assert re.match(r"eqs?\. \(\d+\)", message), message  # each names its equation
        assert f"line {line}: {message}" in out


def _is_hole(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Raise) and isinstance(statement.exc, ast.Call)
            and getattr(statement.exc.func, "id", None) == "NotImplementedError")


@pytest.mark.parametrize("name", NAMES)
def test_the_exercise_is_its_solution_with_holes(name):
    """Outside the holes, the exercise and its solution are the same lines, and each hole is
    exactly one ``raise NotImplementedError(...)`` in place of the solution's lines."""
    exercise = (FOLDER / f"{name}.py").read_text(encoding="utf-8").splitlines()
    solution = (SOLUTIONS / f"{name}.py").read_text(encoding="utf-8").splitlines()
    matcher = difflib.SequenceMatcher(None, exercise, solution, autojunk=False)
    n_holes = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert tag == "replace", (tag, exercise[i1:i2], solution[j1:j2])
        statements = ast.parse(textwrap.dedent("\n".join(exercise[i1:i2]))).body
        assert len(statements) == 1 and _is_hole(statements[0]), exercise[i1:i2]
        n_holes += 1
    assert n_holes == len(exercises.holes(FOLDER / f"{name}.py"))
    assert exercises.holes(SOLUTIONS / f"{name}.py") == []


# (exercise, mistake, the solution's text, the mistaken text, the gradients that must be
# named wrong, words the report must contain: the hint's equation, a diagnosis)
MISTAKES = [
    pytest.param("bilinear_backward",
                 "grad_points[n, p, 0] = grad_x\n            grad_points[n, p, 1] = grad_y",
                 "grad_points[n, p, 0] = grad_y\n            grad_points[n, p, 1] = grad_x",
                 ["grad_points"],
                 ["bilinear.md#with-respect-to-the-point-derivatives-of-the-weights",
                  "components swapped"], id="bilinear: dx and dy swapped"),
    pytest.param("bilinear_backward", "0 <= col < width", "0 <= col < width - 1",
                 ["grad_image", "grad_points"],
                 ["eq. (3) of docs/derivations/bilinear.md#per-tap-zero-padding",
                  "like every wrong one, lies on the image's border"],
                 id="bilinear: the last column's taps forgotten"),
    pytest.param("conv2d_backward", "+= g_out * weight[o, cg, i, j]",
                 "+= g_out * weight[o, cg, kh - 1 - i, kw - 1 - j]", ["grad_input"],
                 ["eq. (8) of docs/derivations/conv2d.md"], id="conv2d: kernel flipped"),
    pytest.param("deform_conv2d_offset_mask", "g_value = g_out * w_ock * m",
                 "g_value = g_out * w_ock", ["grad_input", "grad_offset"],
                 ["eq. (10) of docs/derivations/deform_conv2d.md", "the mask factor included"],
                 id="deform_conv2d: mask factor missing"),
    pytest.param("deform_conv2d_offset_mask", "+= g_out * w_ock * value",
                 "+= g_out * w_ock * m * value", ["grad_mask"],
                 ["eq. (8) of docs/derivations/deform_conv2d.md#mask"],
                 id="deform_conv2d: the mask in its own gradient"),
    pytest.param("ms_deform_attn_backward", "= g_x * width", "= g_x",
                 ["grad_sampling_locations"],
                 ["eqs. (6)-(7) of docs/derivations/ms_deform_attn.md",
                  "the factor W_l is missing"], id="ms_deform_attn: W_l factor missing"),
    pytest.param("ms_deform_attn_backward", "+= g * attn * w\n", "+= g * w\n", ["grad_value"],
                 ["eq. (5) of docs/derivations/ms_deform_attn.md#value-a-scatter"],
                 id="ms_deform_attn: attention weight missing in the scatter"),
    pytest.param("fpn_top_down_backward", "grad_t = grad_t + grad_from_finer",
                 "grad_t = grad_t", ["grad_features[1]", "grad_features[2]"],
                 ["eq. (4) of docs/strategies/fpn.md", "level 0 is right"],
                 id="fpn: upsampled gradient dropped"),
    pytest.param("fpn_top_down_backward", "grad_input[:, :, a, b] += grad",
                 "grad_input[:, :, a, b] = grad", ["grad_features[1]", "grad_features[2]"],
                 ["fpn.md#nearest-upsampling-the-backward-sums-over-the-copies"],
                 id="fpn: copies overwritten instead of summed"),
    pytest.param("focal_loss_backward", "dce_dx = p * (1 - t) - q * t",
                 "dce_dx = q * t - p * (1 - t)", ["grad_inputs"],
                 ["eq. (10) of docs/derivations/losses.md#the-gradient"],
                 id="focal loss: sign of dCE/dx flipped"),
    pytest.param("focal_loss_backward", " + da_dt * (ce * m_gamma))", ")", ["grad_targets"],
                 ["eq. (11) of docs/derivations/losses.md#the-gradient"],
                 id="focal loss: d a_t / dt term dropped"),
]


@pytest.mark.parametrize("name, right, mistake, wrong, words", MISTAKES)
def test_the_checker_catches_a_typical_mistake(name, right, mistake, wrong, words, tmp_path,
                                               capsys):
    source = (SOLUTIONS / f"{name}.py").read_text(encoding="utf-8")
    assert source.count(right) == 1, "the mutation no longer applies to the solution"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(right, mistake), encoding="utf-8")
    code, out, err = _run(capsys, "check", name, "--file", str(path))
    assert code == 1
    assert _failed_line(out) == (f"FAILED: {', '.join(wrong)} "
                                 f"{'is' if len(wrong) == 1 else 'are'} wrong"), out
    for gradient in wrong:  # the worst entry of each, with its index
        assert re.search(rf"^  {re.escape(gradient)}\[[\d, ]+\] is off by ", out, re.M), out
    for word in words:
        assert word in out, out
    assert "Traceback" not in out + err


def _mutated(tmp_path, name: str, right: str, mistake: str) -> Path:
    source = (SOLUTIONS / f"{name}.py").read_text(encoding="utf-8")
    assert source.count(right) == 1
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(right, mistake), encoding="utf-8")
    return path


def test_an_exception_in_the_learners_code_is_one_line(tmp_path, capsys):
    path = _mutated(tmp_path, "bilinear_backward", "grad_image[n, c, row, col] += w * g",
                    "grad_image[n, c, row + height, col] += w * g")
    code, out, err = _run(capsys, "check", "bilinear_backward", "--file", str(path))
    assert code == 1
    assert "FAILED: your code raised IndexError" in out
    line = path.read_text().splitlines().index(
        "                    grad_image[n, c, row + height, col] += w * g") + 1
    assert f"(line {line} of {path}: grad_image[n, c, row + height, col] += w * g)" in out
    assert "Traceback" not in out + err


@pytest.mark.parametrize("right, mistake, message", [
    ("return grad_image, grad_points", "return grad_image",
     "your function returned 1 gradients; expected 2 (grad_image, grad_points)"),
    ("return grad_image, grad_points", "return grad_image, grad_points[..., 0]",
     "grad_points: shape (1, 10), expected (1, 10, 2) (case 1)"),
    ("def sample_backward(", "def sample_backward_(",
     "defines no function sample_backward()"),
    ("\n    return taps\n\n", "\n    return taps)\n\n", "your file does not compile: line 57"),
])
def test_a_file_that_cannot_be_checked_says_why(right, mistake, message, tmp_path, capsys):
    path = _mutated(tmp_path, "bilinear_backward", right, mistake)
    code, out, err = _run(capsys, "check", "bilinear_backward", "--file", str(path))
    assert code == 1
    assert message in out, out
    assert "Traceback" not in out + err


def test_the_default_file_is_under_the_current_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "check", "focal_loss_backward")
    assert code == 2 and out == ""
    assert "no tutorials/exercises/focal_loss_backward.py in the current directory" in err
    assert "--file PATH" in err and "not in the installed package" in err

    copy = tmp_path / "tutorials" / "exercises" / "focal_loss_backward.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(SOLUTIONS / "focal_loss_backward.py", copy)
    code, out, _ = _run(capsys, "check", "focal_loss_backward")
    assert code == 0
    assert "your file: tutorials/exercises/focal_loss_backward.py" in out

    code, _, err = _run(capsys, "check", "focal_loss_backward", "--file", "absent.py")
    assert code == 2 and "--file absent.py: no such file" in err


def test_list_shows_every_exercise_and_the_holes_left(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = _run(capsys, "list")
    assert code == 0
    for name in NAMES:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert row.endswith(f"{len(exercises.holes(FOLDER / f'{name}.py'))} holes left")

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "tutorials" / "exercises" / "conv2d_backward.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(SOLUTIONS / "conv2d_backward.py", copy)
    code, out, _ = _run(capsys, "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert rows["conv2d_backward"].endswith("no holes left: run the check")
    assert "no file here" in rows["focal_loss_backward"]


def _references(text: str) -> set[tuple[str, str]]:
    """``(page, anchor)`` of every ``docs/...md#anchor``, also where a comment or docstring
    breaks the line before the ``#``."""
    return set(re.findall(r"(docs/[\w/]+\.md)\s*(?:#\s+)?#([a-z0-9-]+)", text))


def test_every_page_and_anchor_the_exercises_cite_exists():
    toc = pytest.importorskip("markdown.extensions.toc")
    sources = [ROOT / "scratchvision" / "exercises.py",
               *FOLDER.glob("*.py"), *SOLUTIONS.glob("*.py"), FOLDER / "README.md"]
    cited = set().union(*(_references(p.read_text(encoding="utf-8")) for p in sources))
    assert len(cited) >= 15
    for page, anchor in sorted(cited):
        text = (ROOT / page).read_text(encoding="utf-8")
        slugs = {toc.slugify(line.lstrip("#").strip(), "-")
                 for line in text.splitlines() if line.startswith("#")}
        assert anchor in slugs, f"{page}#{anchor}"
    pages = set(re.findall(r"docs/[\w/]+\.md", "".join(p.read_text() for p in sources)))
    for page in pages:
        assert (ROOT / page).is_file(), page


def test_an_edited_file_is_checked_again(tmp_path, capsys):
    """The learner's file is compiled from its source on every check: an edit that keeps the
    size (and, run quickly, the modification second) is still seen."""
    path = tmp_path / "focal_loss_backward.py"
    source = (SOLUTIONS / "focal_loss_backward.py").read_text(encoding="utf-8")
    path.write_text(source, encoding="utf-8")
    assert _run(capsys, "check", "focal_loss_backward", "--file", str(path))[0] == 0
    path.write_text(source.replace("dm_dt = q - p", "dm_dt = p - q"), encoding="utf-8")
    code, out, _ = _run(capsys, "check", "focal_loss_backward", "--file", str(path))
    assert code == 1 and _failed_line(out) == "FAILED: grad_targets is wrong"
