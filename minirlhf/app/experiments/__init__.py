"""Experiments: scripts that train several runs and write their plots and numbers into docs/.

Each module has a `main(argv=None)` and runs as `minirlhf experiment NAME` (or
`python -m minirlhf.app.experiments.NAME`); they take minutes and are not part of the test suite
(the suite checks each claim at quick settings).
"""
import argparse
from pathlib import Path

import numpy as np

from minirlhf.stages.runs import write_json, write_text_atomic


def experiment_parser(name, doc):
    """The flags every experiment shares: --out (its runs, reused when complete), --docs, --quick, --seed."""
    parser = argparse.ArgumentParser(prog=f"minirlhf experiment {name}", description=doc.split("\n")[0])
    parser.add_argument("--out", default=f"runs/{name}", help="where the trained runs go (reused when complete)")
    parser.add_argument("--docs", default="docs/results", help="where the plots, the numbers and the tables go")
    parser.add_argument("--quick", action="store_true", help="quick pipelines and short runs: a smoke test")
    parser.add_argument("--seed", type=int, default=0, help="seeds every run")
    return parser


def write_results(docs, name, results, plot, markdown):
    """Write docs/<name>.json (the numbers), <name>.png (`plot(results, path)`) and <name>.md (printed too)."""
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    write_json(docs / f"{name}.json", results)
    plot(results, docs / f"{name}.png")
    write_text_atomic(docs / f"{name}.md", markdown)
    print(markdown)
    return docs


def smooth(values, width=5):
    """Trailing moving average (the first points average what there is)."""
    values = np.asarray(values, np.float64)
    return np.array([values[max(0, i - width + 1):i + 1].mean() for i in range(len(values))])


def figure(ncols, width=5.0):
    """A matplotlib Figure with `ncols` panels in a row: (fig, axes)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is
    fig = Figure(figsize=(width * ncols, 3.8))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def save_figure(fig, path, title, axes, xlabel, ylabels):
    """Label every panel, title the figure, write it to `path`."""
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
