"""Figures for the tutorials: save each one as a PNG file, and show it inline in a notebook.

The tutorials are jupytext scripts that run both as plain Python (figures go to files, their
paths are printed) and as notebooks (figures are also displayed under the cell)::

    show = figure_saver("tutorial01")
    fig, ax = plt.subplots()
    ...
    show(fig, "taps")       # saves <temp folder>/taps.png, displays it, closes the figure

matplotlib (and IPython, in a notebook) are imported when a figure is saved, not before.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["figure_saver"]


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def figure_saver(prefix: str) -> Callable:
    """A function ``show(fig, name) -> Path`` that saves ``fig`` as ``name.png`` in a fresh
    temporary folder named after ``prefix``, displays it when running in a notebook (else
    prints the path), and closes it. The folder is ``show.folder``."""
    folder = Path(tempfile.mkdtemp(prefix=f"scratchvision_{prefix}_"))

    def show(fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        if _in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        else:
            print(f"figure saved to {path}")
        return path

    show.folder = folder
    return show
