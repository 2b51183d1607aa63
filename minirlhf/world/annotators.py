"""Simulated human annotators: noisy, possibly biased readers of a hidden gold preference.

An annotator reads a response (text only) and perceives its utility as

    u(y) = g(y) + length_bias · |y| + τ · G,      G ~ Gumbel(0, 1), independent per response

where g is the task's gold reward and |y| the number of words. Because the difference of two
independent Gumbels is logistic, comparing two responses gives exactly the Bradley–Terry model

    P(a ≻ b) = σ((g(a) − g(b)) / τ)                (Bradley & Terry 1952; Christiano et al. 2017)

and sorting K responses by u gives a Plackett–Luce ranking with weights exp(g / τ) (the
Gumbel-max trick) — InstructGPT's K-wise labels (Ouyang et al. 2022, Sec. 3.5). τ → 0 is the
noise-free "researcher" judgement the article asks annotators to agree with; exact ties are
broken by a coin flip.

Graded labels (LLaMA 2, Touvron et al. 2023, Sec. 3.2.1): the chosen response is described as
significantly / better / slightly / negligibly better according to the perceived gap
u(chosen) − u(rejected) ≥ 0.6 / 0.3 / 0.1 / 0, and `MARGIN_TABLE` turns the words into the
reward-model margin used everywhere (3 / 2 / 1 / 0). With τ ≈ 0.15 the noise on a perceived
gap (logistic, standard deviation τπ/√3 ≈ 0.27) is about the width of one grade.

`collect_comparisons` runs the whole labelling job: sample responses from one or several
policies, show them to annotators from a pool, and return rows in the JSONL formats of
`minirlhf.lm.data`, ready to write, read back and train on.

One criterion at a time (LLaMA 2, Sec. 3.2.1; Safe RLHF, Dai et al. 2023): annotators judge a
task's `gold_reward` (helpfulness). To collect harmlessness comparisons instead, hand them
`Harmlessness(task)`, the same task whose gold judgement is −gold_cost — the less harmful
response is the chosen one.
"""

import math
from dataclasses import dataclass

import numpy as np

from minirlhf.world.metrics import agreement
from minirlhf.world.tasks import pick

MARGIN_TABLE = {"significantly better": 3, "better": 2, "slightly better": 1, "negligibly better": 0}
GRADE_THRESHOLDS = ((0.6, "significantly better"), (0.3, "better"), (0.1, "slightly better"),
                    (0.0, "negligibly better"))  # perceived gap >= threshold -> grade, first match
RANKING_K = (4, 9)  # InstructGPT showed labelers between 4 and 9 responses


@dataclass(frozen=True)
class Annotator:
    name: str  # written to each row's "annotator" field
    tau: float  # Bradley–Terry noise: P(a ≻ b) = σ((g(a) − g(b))/τ); 0 = noise-free, >= 0
    length_bias: float = 0.0  # utility added per word of a response (> 0: a taste for long answers)

    def __post_init__(self):
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"Annotator.tau must be a finite number >= 0, got {self.tau}")
        if not math.isfinite(self.length_bias):
            raise ValueError(f"Annotator.length_bias must be finite, got {self.length_bias}")

    def utilities(self, task, prompt, responses, rng):
        """Perceived utilities u_i = g_i + length_bias·|y_i| + τ·G_i of K responses, shape (K,)."""
        gold = np.array([task.gold_reward(prompt, r) + self.length_bias * len(r.split()) for r in responses])
        return gold + self.tau * rng.gumbel(size=len(responses))

    def rank(self, task, prompt, responses, rng):
        """Plackett–Luce ranking: response indices from most to least preferred (ties: coin flips)."""
        u = self.utilities(task, prompt, responses, rng)
        return [int(i) for i in np.lexsort((rng.random(len(u)), -u))]

    def compare(self, task, prompt, a, b, rng):
        """Bradley–Terry choice: True when a is preferred to b."""
        return self.rank(task, prompt, [a, b], rng)[0] == 0

    def grade(self, task, prompt, a, b, rng):
        """-> (a_preferred, margin): the choice and its MARGIN_TABLE value."""
        u = self.utilities(task, prompt, [a, b], rng)
        a_preferred = bool(u[0] > u[1] or (u[0] == u[1] and rng.random() < 0.5))
        gap = abs(float(u[0] - u[1]))
        return a_preferred, next(MARGIN_TABLE[g] for t, g in GRADE_THRESHOLDS if gap >= t)


class Harmlessness:
    """A task as a harmlessness annotator judges it: utility −gold_cost, so the safer response wins."""

    def __init__(self, task):
        if task.gold_cost is None:
            raise ValueError(f"task {task.name} has no harm criterion (gold_cost is None)")
        self.task, self.name = task, f"{task.name}-harmlessness"

    def gold_reward(self, prompt, response):
        return -self.task.gold_cost(prompt, response)


def default_pool():
    """Five annotators: one careful, three typical (one who likes long answers), one hasty."""
    return [Annotator("careful", 0.05), Annotator("typical-1", 0.15), Annotator("typical-2", 0.15),
            Annotator("likes-long", 0.15, length_bias=0.02), Annotator("hasty", 0.4)]


def gold_preferences(task, pairs):
    """Noise-free signed preferences g(a) − g(b) for [(prompt, a, b), ...]."""
    return [task.gold_reward(p, a) - task.gold_reward(p, b) for p, a, b in pairs]


def annotator_preferences(annotator, task, pairs, rng):
    """One annotator's choices on [(prompt, a, b), ...] as +1 (a) / −1 (b)."""
    return [1.0 if annotator.compare(task, p, a, b, rng) else -1.0 for p, a, b in pairs]


def agreement_rates(annotators, task, pairs, rng):
    """Each annotator labels every pair once -> {'vs_gold': {name: rate}, 'between': (n, n) array}.

    Rates are `metrics.agreement`: with the noise-free gold judgement ('vs_gold') and between
    every two annotators ('between'; the diagonal is an annotator against an independent
    second labelling of its own, its self-consistency)."""
    gold = gold_preferences(task, pairs)
    first = [annotator_preferences(a, task, pairs, rng) for a in annotators]
    second = [annotator_preferences(a, task, pairs, rng) for a in annotators]
    between = np.array([[agreement(x, y if i != j else second[i]) for j, y in enumerate(first)]
                        for i, x in enumerate(first)])
    return {"vs_gold": {a.name: agreement(x, gold) for a, x in zip(annotators, first)}, "between": between}


def collect_comparisons(task, policies, prompts, *, rng, kind="pairwise", k=None, annotators=None):
    """Sample responses to each prompt and have annotators label them -> list of JSONL row dicts.

    policies: one policy `policy(prompts, rng) -> responses` or a list; response slot s of every
    prompt comes from policies[s % len(policies)] (Stiennon et al. sampled from several).
    kind: 'pairwise' ({prompt, chosen, rejected, annotator}), 'graded' (the same plus
    'margin' from MARGIN_TABLE) — both use k = 2 — or 'ranking' ({prompt, responses,
    ranking, annotator}, k in 4..9, default 4). annotators: a pool (default `default_pool()`);
    each prompt is labelled by one annotator drawn from it.
    """
    if kind not in ("pairwise", "graded", "ranking"):
        raise ValueError(f"kind must be 'pairwise', 'graded' or 'ranking', got {kind!r}")
    if kind == "ranking":
        k = RANKING_K[0] if k is None else k
        if not RANKING_K[0] <= k <= RANKING_K[1]:
            raise ValueError(f"k must be between {RANKING_K[0]} and {RANKING_K[1]} for rankings, got {k}")
    elif k not in (None, 2):
        raise ValueError(f"k must be 2 for {kind} labels, got {k} (use kind='ranking' for K-wise)")
    k = k or 2
    policies = policies if isinstance(policies, (list, tuple)) else [policies]
    annotators = annotators or default_pool()
    slots = [policies[s % len(policies)](prompts, rng) for s in range(k)]  # k lists, one response per prompt
    rows = []
    for i, prompt in enumerate(prompts):
        responses, annotator = [slot[i] for slot in slots], pick(rng, annotators)
        if kind == "ranking":
            ranking = annotator.rank(task, prompt, responses, rng)
            rows.append({"prompt": prompt, "responses": responses, "ranking": ranking,
                         "annotator": annotator.name})
            continue
        a, b = responses
        a_preferred, margin = annotator.grade(task, prompt, a, b, rng)
        row = {"prompt": prompt, "chosen": a if a_preferred else b, "rejected": b if a_preferred else a}
        if kind == "graded":
            row["margin"] = margin
        rows.append({**row, "annotator": annotator.name})
    return rows
