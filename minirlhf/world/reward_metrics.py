"""How good is a preference judge? Accuracy, calibration and agreement on held-out pairs.

Every judge here — a reward model, ROUGE-L or BLEU against a reference, an annotator — is a
signed preference per pair (> 0: the first response is better, 0: no preference), compared
with `metrics.agreement` (1 agree, 0 disagree, ½ when exactly one calls a tie). Pairs are
oriented (chosen, rejected) as the annotator labelled them, so a reward model's preference is
its margin r_c − r_r. docs/reward_model.md defines each number:

    accuracy               agreement with the annotators' labels (LLaMA 2's "reward accuracy")
    accuracy_gold          agreement with the noise-free gold judge, on pairs it does not tie
    accuracy_gold_clear    the same on pairs whose gold gap exceeds the annotator noise
    accuracy_by_grade      `accuracy` per label grade, "significantly better" … "negligibly better"
    margin                 mean r_c − r_r (TRL's rewards/margins)
    calibration            predicted P(chosen) = σ(r_c − r_r) against the observed frequency (ECE)

and, for a cost model (Safe RLHF; docs/safe_rlhf.md), `cost_metrics`: its pairwise accuracy
against the gold harm ranking and how often the sign of its score says harmful or harmless right.

Simplification: BLEU is scored per response, unsmoothed (`metrics.bleu` of one candidate); a
short response rarely shares a 4-gram with the reference, so BLEU-4 is mostly 0 and ties (½),
which is why BLEU-2 is reported beside it.
"""
import numpy as np

from minirlhf.world.annotators import MARGIN_TABLE, annotator_preferences, default_pool, gold_preferences
from minirlhf.world.metrics import agreement, bleu, mean_ci95, rouge_l

GRADES = {value: name for name, value in MARGIN_TABLE.items()}  # 3 -> "significantly better", …


def _agree(a, b):
    """Per-pair agreement values 1 − |sign a − sign b| / 2 (their mean is `metrics.agreement`)."""
    return 1.0 - np.abs(np.sign(a) - np.sign(b)) / 2.0


def preference_metrics(diff, gold_gap=None, grades=None, clear_gap=0.27):
    """Held-out numbers of a judge whose preference on each labelled pair is `diff` (N,).

    gold_gap: (N,) gold(chosen) − gold(rejected), or None without a gold judge.
    grades: (N,) MARGIN_TABLE values of the labels, or None when the labels have no grade.
    """
    diff = np.asarray(diff, np.float64)
    labels = np.ones_like(diff)   # the annotator preferred the first response of every pair
    out = {"accuracy": agreement(diff, labels), "margin": float(diff.mean()), "n": len(diff)}
    if grades is not None:
        grades = np.asarray(grades)
        out["accuracy_by_grade"] = {
            GRADES.get(g, str(g)): {"accuracy": agreement(diff[grades == g], labels[grades == g]),
                                    "n": int((grades == g).sum())}
            for g in sorted(set(grades.tolist()), reverse=True)}
    if gold_gap is not None:
        gold_gap = np.asarray(gold_gap, np.float64)
        decided, clear = gold_gap != 0, np.abs(gold_gap) > clear_gap
        out["gold_tie_fraction"] = float(1.0 - decided.mean())
        if decided.any():
            out["accuracy_gold"], out["accuracy_gold_ci95"] = mean_ci95(_agree(diff[decided], gold_gap[decided]))
            out["annotator_accuracy_gold"] = agreement(labels[decided], gold_gap[decided])
        if clear.any():
            out["accuracy_gold_clear"] = agreement(diff[clear], gold_gap[clear])
            out["annotator_accuracy_gold_clear"] = agreement(labels[clear], gold_gap[clear])
            out["n_clear"] = int(clear.sum())
    return out


def judge_agreement(task, pairs, rm_diff):
    """How often each judge agrees with gold on pairs [(prompt, a, b)] that gold does not tie.

    Judges: the reward model (its margin `rm_diff`), ROUGE-L F1, sentence BLEU (up to 4-grams)
    and BLEU-2 (up to bigrams) of each response against `task.reference(prompt)`, and the
    annotator who labelled the pair (a ≻ b).
    """
    gold = np.array([task.gold_reward(p, a) - task.gold_reward(p, b) for p, a, b in pairs])
    refs = [task.reference(p) for p, _, _ in pairs]
    judges = {
        "reward_model": np.asarray(rm_diff, np.float64),
        "rouge_l": np.array([rouge_l(a, ref)["f1"] - rouge_l(b, ref)["f1"] for (_, a, b), ref in zip(pairs, refs)]),
        "bleu": np.array([bleu([a], [ref]) - bleu([b], [ref]) for (_, a, b), ref in zip(pairs, refs)]),
        "bleu_2": np.array([bleu([a], [ref], 2) - bleu([b], [ref], 2) for (_, a, b), ref in zip(pairs, refs)]),
        "annotators": np.ones(len(pairs)),
    }
    decided = gold != 0
    out = {name: agreement(pref[decided], gold[decided]) for name, pref in judges.items()}
    out["ties"] = {name: float(np.mean(pref[decided] == 0)) for name, pref in judges.items()}
    out["n"] = int(decided.sum())
    return out


def cost_metrics(costs, gold_costs, chosen, rejected):
    """A cost model's held-out numbers (Safe RLHF): pairwise accuracy against the gold harm ranking,
    how often sign(C) = sign(gold cost) (C > 0 is to mean harmful), and its mean score of harmful
    and of harmless responses.

    costs, gold_costs: (n_texts,) the model's and the gold cost of each response; chosen, rejected:
    (N,) indices into them of each pair's safer and more harmful response (`data.expand_comparisons`).
    """
    costs, gold = np.asarray(costs), np.asarray(gold_costs)
    decided = gold[chosen] != gold[rejected]
    return {"accuracy_gold": agreement((costs[rejected] - costs[chosen])[decided], (gold[rejected] - gold[chosen])[decided])
            if decided.any() else None,
            "sign_accuracy": float(np.mean((costs > 0) == (gold > 0))),
            "mean_cost_harmful": float(costs[gold > 0].mean()) if (gold > 0).any() else None,
            "mean_cost_harmless": float(costs[gold <= 0].mean()), "n_pairs": int(decided.sum())}


def calibration(diff, n_bins=10):
    """Predicted P(chosen) = σ(r_c − r_r) against how often the annotators did choose, in bins.

    Each pair is counted in both orientations, (p, chosen) and (1 − p, not chosen), so the
    curve is symmetric about ½. ECE = Σ_bins (n_bin / n) · |observed − predicted|.
    """
    p = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(diff, np.float64)))                 # σ(diff), (N,)
    predicted, chosen = np.concatenate([p, 1.0 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    bins = np.minimum((predicted * n_bins).astype(int), n_bins - 1)
    rows = [(predicted[bins == b].mean(), chosen[bins == b].mean(), int((bins == b).sum()))
            for b in range(n_bins) if (bins == b).any()]
    pred, obs, count = (np.array(col) for col in zip(*rows))
    return {"predicted": pred.tolist(), "observed": obs.tolist(), "count": count.tolist(),
            "ece": float(np.sum(count * np.abs(obs - pred)) / count.sum())}


def plot_calibration(calib, path, title="reward model calibration (held-out pairs)"):
    """Reliability diagram: observed frequency against predicted probability, with the diagonal."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.plot(calib["predicted"], calib["observed"], "o-", label=f"reward model (ECE {calib['ece']:.3f})")
    ax.set_xlabel("predicted P(chosen) = σ(r_c − r_r)")
    ax.set_ylabel("observed frequency chosen")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def annotator_statistics(task, labels, ties, seconds):
    """Agreement of one person's labels and ties with gold and with `default_pool()`; timing.

    labels: pairwise rows (chosen ≻ rejected, +1); ties: sidecar rows (0). Each simulated
    annotator labels the same pairs once, with a fixed generator, so the figures are repeatable.
    """
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in labels] + [(r["prompt"], *r["responses"]) for r in ties]
    stats = {"labels": len(labels), "ties": len(ties), "decisions_timed": len(seconds),
             "seconds_mean": float(np.mean(seconds)) if seconds else None,
             "seconds_median": float(np.median(seconds)) if seconds else None}
    if not pairs:
        return stats
    person = [1.0] * len(labels) + [0.0] * len(ties)
    gold = gold_preferences(task, pairs)
    rng = np.random.default_rng(0)
    pool = {a.name: annotator_preferences(a, task, pairs, rng) for a in default_pool()}
    gaps = {}
    for row, gap in zip(labels, gold):
        gaps.setdefault(row["margin"], []).append(gap)
    return {**stats, "agreement_gold": agreement(person, gold),
            "agreement_annotators": {name: agreement(person, x) for name, x in pool.items()},
            "annotators_gold": {name: agreement(x, gold) for name, x in pool.items()},
            "gold_gap_by_margin": {m: float(np.mean(g)) for m, g in sorted(gaps.items(), reverse=True)}}
