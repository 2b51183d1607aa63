"""Experiments: scripts that train several runs and write their plots and numbers into docs/.

Each module has a `main(argv=None)` and runs as `minirlhf experiment NAME` (or
`python -m minirlhf.experiments.NAME`); they take minutes and are not part of the test suite
(the suite checks each claim at quick settings).
"""
import argparse
from pathlib import Path

from ..runs import write_json, write_text_atomic


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
