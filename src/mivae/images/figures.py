"""Figures drawn from data and results; never trains anything.

Pixels are drawn as the thesis shows them: 0 black, 1 white.
"""

import matplotlib

matplotlib.use("Agg")  # files only: no display is assumed

import matplotlib.pyplot as plt  # noqa: E402

from mivae.artifacts import atomic_path  # noqa: E402
from mivae.errors import MivaeError  # noqa: E402

FORMATS = ("png", "pdf", "svg")


def check_figure_path(path):
    """Returns the format of the figure file `path` (png, pdf or svg) from its suffix."""
    fmt = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if fmt not in FORMATS:
        raise MivaeError(f"cannot tell the figure format of {path}; end the file name in .png, .pdf or .svg.")
    return fmt


def save_figure(fig, path):
    """Writes `fig` to `path` atomically, in the format its suffix names, and closes it."""
    fmt = check_figure_path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    except OSError as e:
        raise MivaeError(f"cannot write {path}: {e.strerror or e}.") from None
    finally:
        plt.close(fig)


def image_grid(rows, column_titles, path, cell_inches=1.6):
    """Draws a grid of images and writes it to `path`; returns `path`.

    `rows` is a list of rows, each a list of (H, W) arrays in [0, 1]; `column_titles`
    holds one title per column, as in the thesis' Figures 4, 9 and 13.
    """
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows + 0.3), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
