"""Small matplotlib helpers (Agg canvas, no global backend switch)."""
from __future__ import annotations

from pathlib import Path


def line_plot(path, series: dict, xlabel: str = "", ylabel: str = "", title: str = "",
              logx: bool = False, logy: bool = False) -> Path:
    """Save one axes of lines, series = {label: (xs, ys)}, as a PNG at path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=str(label), linewidth=1.3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


__all__ = ["line_plot"]
