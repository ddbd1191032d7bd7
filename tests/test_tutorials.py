"""Every tutorial runs top to bottom as a notebook (jupytext -> nbclient), as a reader runs it."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "no tutorials found"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_figure_saver_writes_a_png_and_closes_the_figure(capsys):
    import matplotlib.pyplot as plt

    from scratchvision.tutorial_figures import figure_saver

    show = figure_saver("test")
    fig, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    path = show(fig, "line")
    assert path == show.folder / "line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert str(path) in capsys.readouterr().out  # outside a notebook it says where it went
