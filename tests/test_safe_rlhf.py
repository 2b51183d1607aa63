"""Safe RLHF: the cost-model loss against hand values and finite differences, the multiplier rising
while the cost budget is exceeded and falling once it is kept (in the formula and in real runs), the
Lagrangian advantage, an exact resume, the command line — and at quick settings the cost model
separating harmful from harmless responses and Safe RLHF lowering the harm rate of the SFT model."""
import math

import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.quick import quick_mixed, quick_safe_rlhf
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.lm.data import load_preferences
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.stages.experience import evaluate_safety
from minirlhf.stages.runs import read_metrics, read_summary, save_run
from minirlhf.variants.safe_rlhf import (SafeRLHFConfig, cost_model_loss, lagrangian_advantages, train_safe_rlhf,
                                         update_log_lambda)
from minirlhf.world.tasks import get_task

import claims
from claims import assert_holds

TASK = get_task("assistant")
LOG_SIGMA = lambda z: -np.log1p(np.exp(-z))  # noqa: E731


def test_cost_model_loss_against_hand_values():
    zero = Tensor(np.zeros(3))
    # C = 0 everywhere: each of the three terms is ln 2
    assert float(cost_model_loss(zero, zero, [False] * 3, [True] * 3).data) == pytest.approx(3 * math.log(2))
    # the safer response C = −1 (harmless), the more harmful C = 2 (harmful): −log σ(3) − log σ(2) − log σ(1)
    loss = cost_model_loss(Tensor(np.array([-1.0])), Tensor(np.array([2.0])), [False], [True])
    assert float(loss.data) == pytest.approx(-(LOG_SIGMA(3.0) + LOG_SIGMA(2.0) + LOG_SIGMA(1.0)))
    # both harmless: the sign term pushes both below 0, the pair term still orders them
    loss = cost_model_loss(Tensor(np.array([-1.0])), Tensor(np.array([-0.5])), [False], [False])
    assert float(loss.data) == pytest.approx(-(LOG_SIGMA(0.5) + LOG_SIGMA(0.5) + LOG_SIGMA(1.0)))


def test_cost_model_loss_passes_gradcheck_in_float64():
    rng = np.random.default_rng(0)
    chosen, rejected = (Tensor(rng.normal(size=6) * 3, requires_grad=True) for _ in range(2))
    chosen_harmful, rejected_harmful = rng.random(6) < 0.3, rng.random(6) < 0.7
    gradcheck(lambda c, r: cost_model_loss(c, r, chosen_harmful, rejected_harmful), [chosen, rejected])


def test_multiplier_rises_while_the_budget_is_exceeded_and_falls_once_it_is_kept():
    log_lam = math.log(0.5)
    # ln λ ← ln λ + α·λ·(J_C − d)
    assert update_log_lambda(log_lam, 2.0, 0.0, 0.1, 10.0) == pytest.approx(log_lam + 0.1 * 0.5 * 2.0)
    assert update_log_lambda(log_lam, -3.0, -1.0, 0.1, 10.0) == pytest.approx(log_lam - 0.1 * 0.5 * 2.0)
    assert update_log_lambda(log_lam, -1.0, -1.0, 0.1, 10.0) == log_lam            # on the budget: unchanged
    assert update_log_lambda(math.log(9.0), 50.0, 0.0, 1.0, 10.0) == pytest.approx(math.log(10.0))  # capped
    assert update_log_lambda(log_lam, 2.0, 0.0, 0.0, 10.0) == log_lam              # α = 0: a fixed λ


def test_lagrangian_advantage_moves_from_helpfulness_to_harm_as_lambda_grows():
    reward_adv, cost_adv = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    np.testing.assert_array_equal(lagrangian_advantages(reward_adv, cost_adv, 0.0), reward_adv)
    np.testing.assert_allclose(lagrangian_advantages(reward_adv, cost_adv, 1.0), (reward_adv - cost_adv) / 2)
    np.testing.assert_allclose(lagrangian_advantages(reward_adv, cost_adv, 1e9), -cost_adv, atol=1e-8)


# ----------------------------------------------------------------------------- tiny runs on the assistant task

def tiny_assistant_runs(tmp_path):
    """A random 1-layer policy, reward model and cost model saved as runs (scorers with strong heads: ±1)."""
    rng = np.random.default_rng(0)
    config = GPTConfig(vocab_size=TASK.tokenizer.vocab_size, block_size=TASK.block_size, n_layer=1, n_head=2,
                       n_embd=16)
    models = {"sft": GPT(config, rng), "rm": ScalarHeadModel(config, rng), "cm": ScalarHeadModel(config, rng)}
    for name, model in models.items():
        if name != "sft":
            model.score.weight.data *= 50.0
        (tmp_path / name).mkdir(parents=True)
        save_run(tmp_path / name, stage=name, task="assistant", model=model, tokenizer=TASK.tokenizer, stage_config={})
    return {name: tmp_path / name for name in models}


TINY = dict(steps=10, batch_size=16, minibatch_size=8, ppo_epochs=2, lr=3e-3, kl_coef=0.0, lambda_lr=0.5,
            max_new_tokens=6, missing_eos_penalty=0.0, eval_prompts=8, checkpoint_every=100)


def tiny_safe_rlhf(tmp_path, name, **overrides):
    runs = tiny_assistant_runs(tmp_path / name)
    out = train_safe_rlhf(SafeRLHFConfig(**{**TINY, **overrides}), init=runs["sft"], reward=runs["rm"], cost=runs["cm"],
                    out=tmp_path / name / "run", quiet=True)
    return read_metrics(out)


def test_in_a_run_lambda_falls_under_budget_and_rises_over_it(tmp_path):
    kept = tiny_safe_rlhf(tmp_path, "kept", threshold=3.0)            # J_C < d throughout (C is about ±1)
    exceeded = tiny_safe_rlhf(tmp_path, "exceeded", threshold=-3.0, lambda_lr=0.02)    # J_C > d throughout
    lam_kept, lam_exceeded = (np.array([r["lambda"] for r in rows]) for rows in (kept, exceeded))
    assert lam_kept[0] < 1.0 and np.all(np.diff(lam_kept) < 0)          # λ starts at 1
    assert lam_exceeded[0] > 1.0 and np.all(np.diff(lam_exceeded) > 0)
    assert all(r["cost_score"] < 3.0 for r in kept) and all(r["cost_score"] > -3.0 for r in exceeded)


def test_resumed_run_ends_with_the_same_weights_and_multiplier(tmp_path):
    runs = tiny_assistant_runs(tmp_path)
    config = dict(TINY, threshold=0.0, checkpoint_every=2)
    straight = train_safe_rlhf(SafeRLHFConfig(**{**config, "steps": 4}), init=runs["sft"], reward=runs["rm"],
                         cost=runs["cm"], out=tmp_path / "straight", quiet=True)
    train_safe_rlhf(SafeRLHFConfig(**{**config, "steps": 2}), init=runs["sft"], reward=runs["rm"], cost=runs["cm"],
              out=tmp_path / "resumed", quiet=True)
    resumed = train_safe_rlhf(SafeRLHFConfig(**{**config, "steps": 4}), init=runs["sft"], reward=runs["rm"],
                        cost=runs["cm"], out=tmp_path / "resumed", resume=True, quiet=True)
    for name in ("model.npz", "reward_critic.npz", "cost_critic.npz"):
        a, b = load_state_dict_file(straight / name), load_state_dict_file(resumed / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert read_summary(straight)["lambda"] == read_summary(resumed)["lambda"]
    assert [r["lambda"] for r in read_metrics(straight)] == [r["lambda"] for r in read_metrics(resumed)]


def test_cli_trains_a_cost_model_and_runs_safe_rlhf(tmp_path, capsys):
    runs = tiny_assistant_runs(tmp_path)
    assert main(["cost-model", "--init", str(runs["sft"]), "--comparisons", "8", "--heldout-comparisons", "8",
                 "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "cost"), "--quiet"]) == 0
    flags = ["--steps", "1", "--batch-size", "4", "--minibatch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "4",
             "--eval-prompts", "6", "--quiet"]
    assert main(["safe-rlhf", "--init", str(runs["sft"]), "--reward", str(runs["rm"]), "--cost", str(tmp_path / "cost"),
                 "--out", str(tmp_path / "safe"), *flags]) == 0
    summary = read_summary(tmp_path / "safe")
    assert set(summary["safety"]) == {"harmful", "harmless"}
    assert summary["safety"]["harmful"]["n"] + summary["safety"]["harmless"]["n"] == 6
    # a reward model in place of the policy: one line naming what to change
    assert main(["safe-rlhf", "--init", str(runs["rm"]), "--reward", str(runs["rm"]), "--cost", str(runs["cm"]),
                 *flags]) == 2
    assert "must be a language-model run" in capsys.readouterr().err


def test_evaluate_safety_splits_harmful_and_harmless_prompts():
    prompts = TASK.prompts("eval")[:30]
    comply = lambda ps, rng: [TASK.reference(p) if not TASK.is_harmful(p) else  # noqa: E731
                              "first , cut the lock . finally , ride away ." for p in ps]
    out = evaluate_safety(comply, TASK, prompts, rng=np.random.default_rng(0))
    n_harmful = sum(TASK.is_harmful(p) for p in prompts)
    assert out["harmful"]["n"] == n_harmful and out["harmless"]["n"] == 30 - n_harmful
    assert out["harmful"]["harm_rate"] == 1.0 and out["harmless"]["harm_rate"] == 0.0
    assert out["harmless"]["helpfulness"] == 1.0


# ----------------------------------------------------------------------------- quick settings (cached runs)

@pytest.fixture(scope="module")
def quick():
    return quick_safe_rlhf()


def test_quick_cost_model_puts_harmful_responses_above_zero(quick):
    # trained on the pairs the helpfulness annotators labelled, each labelled again for harmlessness
    as_pairs = lambda path: [(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in load_preferences(path)]  # noqa: E731
    assert as_pairs(quick["cost"] / "comparisons.jsonl") == as_pairs(quick["reward"] / "comparisons.jsonl")
    assert_holds(claims.safe_rlhf_cost_model())


def test_quick_safe_rlhf_prices_harm_and_lowers_the_harm_rate(quick):
    # the SFT model's rollouts exceed the budget: λ rises, then falls once the cost is under it; the objective:
    # the helpfulness reward rises while the harm rate on harmful prompts falls
    assert_holds(claims.safe_rlhf_prices_harm())


def test_quick_safe_rlhf_is_as_harmless_as_a_mixed_reward_model_and_more_helpful(quick):
    mixed = quick_mixed()
    assert read_summary(mixed["mixed-rm"])["n_train"] == read_summary(quick["reward"])["n_train"] + \
        read_summary(quick["cost"])["n_train"]                 # both labelling jobs, pooled
    # at quick settings the mixed reward model removes harm too, so Safe RLHF is asserted no more harmful, not
    # less. That the mixed model pays for it in helpfulness on harmless prompts is not robust at quick settings
    # (Safe RLHF's lead changes sign across seeds and BLAS kernels: docs/results/robustness.md); the safe-rlhf
    # experiment reports it at default settings with its confidence intervals (docs/results/safe_rlhf.md).
    assert_holds(claims.safe_rlhf_vs_mixed())
