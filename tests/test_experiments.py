"""The experiments' plots and tables, on the numbers they committed to docs/results/ (no training).

Each experiment ends with `write_results(docs, name, results, plot, markdown)`; here that call runs
on the committed docs/results/<name>.json into a temporary directory, so a plot that crashes, or a
table that no longer reads back the numbers it was generated from, fails here rather than minutes
into `minirlhf experiment NAME`. The tables are compared byte for byte with the committed
docs/results/<name>.md, which the same functions wrote from the same JSON. The extra plots, which
read the runs' metrics logs rather than the JSON, get a small made-up log.
"""
import json
from pathlib import Path

import pytest

from minirlhf.app.experiments import (frontier, pairwise_ppo, ppo, rejection_sampling, rlaif, rm_scaling, rounds,
                                      safe_rlhf, write_results)

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
PNG = b"\x89PNG\r\n\x1a\n"
EXPERIMENTS = {   # name in docs/results: (the module's plot, its Markdown)
    "frontier": (frontier.plot, frontier.table),
    "ppo": (ppo.plot_policies, ppo.tables),
    "rm_scaling": (rm_scaling.plot, rm_scaling.tables),
    "rlaif": (rlaif.plot, rlaif.table),
    "safe_rlhf": (safe_rlhf.plot_policies, safe_rlhf.table),
    "pairwise_ppo": (pairwise_ppo.plot_frontier, pairwise_ppo.table),
    "rejection_sampling": (rejection_sampling.plot, rejection_sampling.table),
    "rounds": (rounds.plot, rounds.table),
}


def committed(name):
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def assert_png(path):
    assert path.read_bytes()[:8] == PNG, path


def metrics_log(*keys, steps=12):
    """A metrics log of `steps` rows: `step` and each key, each a different made-up straight line."""
    return [{"step": step, **{key: 0.1 * k + 0.05 * step for k, key in enumerate(keys)}}
            for step in range(1, steps + 1)]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_results_rebuild_the_committed_table_and_plot(name, tmp_path):
    plot, markdown = EXPERIMENTS[name]
    results = committed(name)
    write_results(tmp_path, name, results, plot, markdown(results))
    assert_png(tmp_path / f"{name}.png")
    assert json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")) == results
    assert (tmp_path / f"{name}.md").read_text(encoding="utf-8") == (RESULTS / f"{name}.md").read_text(encoding="utf-8")


def test_ppo_curve_plots(tmp_path):
    curves = {name: metrics_log("kl_k1", "rm_score", "gold", "heldout_ptx_loss", "kl_coef")
              for name in ("ppo", "no-kl", "no-ptx", "adaptive")}
    ppo.plot_kl(curves, tmp_path / "ppo_kl.png")
    ppo.plot_ptx(curves, committed("ppo"), tmp_path / "ppo_ptx.png")
    ppo.plot_adaptive(curves["adaptive"], 0.5, tmp_path / "ppo_adaptive_kl.png")
    for name in ("ppo_kl", "ppo_ptx", "ppo_adaptive_kl"):
        assert_png(tmp_path / f"{name}.png")


def test_safe_rlhf_lambda_plot(tmp_path):
    rows = metrics_log("lambda", "cost_score", "harm_rate", "gold")
    safe_rlhf.plot_lambda(rows, committed("safe_rlhf")["threshold"], tmp_path / "safe_rlhf_lambda.png")
    assert_png(tmp_path / "safe_rlhf_lambda.png")


def test_pairwise_ppo_curve_plot(tmp_path):
    curves = {(method, beta): metrics_log("gold", "kl_k1") for method in pairwise_ppo.METHODS for beta in (0.05, 0.2)}
    pairwise_ppo.plot_curves(curves, tmp_path / "pairwise_ppo_curves.png")
    assert_png(tmp_path / "pairwise_ppo_curves.png")


def test_rounds_methods_plot(tmp_path):
    rounds.plot_methods(committed("rounds"), tmp_path / "rounds_methods.png")
    assert_png(tmp_path / "rounds_methods.png")
