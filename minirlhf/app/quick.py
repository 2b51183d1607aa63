"""The named quick runs that tests and notebooks share, each trained once per cache of quick runs.

`quick_run(task, stage)` (`app/pipeline.py`) caches the quick pipeline's own stages; the runs
here are the others the tests and notebooks read: PPO variants, an SFT model 4× larger, a small
reward model, rejection sampling, rounds, RLAIF, Safe RLHF and its mixed-RM baseline, P3O, GRPO. Each
is `quick_extra(task, name, train)`: trained on first use beside the quick pipeline of its task
and seed (so a code change retrains it too), with the experiments' own recipe at their --quick
settings. Every one takes `seed`, which `tests/claims.py` sweeps (`benchmarks/robustness.py`).
"""
from minirlhf.app.experiments.pairwise_ppo import train_method
from minirlhf.app.experiments.ppo import versus_bigger_sft
from minirlhf.app.experiments.rejection_sampling import QUICK_RS
from minirlhf.app.experiments.rlaif import QUICK_SEED_COMPARISONS, train_reward_models
from minirlhf.app.experiments.rm_scaling import train_size
from minirlhf.app.experiments.rounds import rounds_config
from minirlhf.app.experiments.safe_rlhf import train_mixed, train_safe
from minirlhf.app.pipeline import QUICK, make_config, quick_extra, quick_run, run
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.runs import read_summary, write_summary
from minirlhf.variants.grpo import GRPOConfig, train_grpo
from minirlhf.variants.rejection_sampling import RejectionSamplingConfig, train_rejection_sampling
from minirlhf.variants.rounds import RoundsConfig, run_rounds

# GRPO at quick settings: 50 steps of 8 prompts × 8 responses (about the quick PPO run's wall time: no value
# model, no ptx), the KL in the reward (k1 summed, β = 0.2 as the quick PPO run's); GRPOConfig's defaults otherwise
QUICK_GRPO = {"steps": 50, "lr": 3e-4, "kl_coef": 0.2, "kl_placement": "reward", "checkpoint_every": 50}


def quick_variant(name, seed=0, **overrides):
    """A variant of the cached quick PPO run of `seed` (same seed and settings, `overrides` changed), trained once
    per cache of quick runs and shared by the tests and notebook 06; returns its run directory."""
    def train(run_dir):
        train_ppo(PPOConfig(**{**QUICK["ppo"], "seed": seed, **overrides}), init=quick_run("sentiment", "sft", seed),
            reward=quick_run("sentiment", "reward", seed), out=run_dir, quiet=True)
    return quick_extra("sentiment", name, train, seed)


def quick_vs_4x_sft(seed=0):
    """Finding 4 at quick settings: `versus_bigger_sft` of the cached quick PPO run against an SFT model with
    n_embd 128 made by the quick recipe (in `base-4x`), on the PPO run's own held-out prompts; cached beside the
    quick pipeline for the tests, returns the numbers."""
    def train(run_dir):
        big = run(make_config("sentiment", seed, quick=True, overrides={"pretrain": {"n_embd": 128}}),
                  out=run_dir.parent / "base-4x", quiet=True, until="sft")
        ppo_dir = quick_run("sentiment", "ppo", seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_summary(run_dir, versus_bigger_sft(ppo_dir, quick_run("sentiment", "sft", seed), big["sft"],
                                                 read_summary(ppo_dir)["n"], seed))
    return read_summary(quick_extra("sentiment", "ppo-vs-4x-sft", train, seed))


def quick_size(n_layer, n_head, n_embd, seed=0):
    """`train_size` at quick settings from the quick reward run, cached beside the quick pipeline for the tests
    (the body in `rm-body-LxE`); returns the reward model's run directory."""
    body = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    return quick_extra("sentiment", f"rm-size-{n_layer}x{n_embd}", lambda d: train_size(
        body, quick_run("sentiment", "reward", seed), d.parent / f"rm-body-{n_layer}x{n_embd}", d, seed=seed,
        quick=True), seed)


def quick_rejection_sampling(seed=0):
    """Rejection-sampling fine-tuning of the cached quick SFT model of `seed` (QUICK_RS), trained once per cache of
    quick runs and shared by the tests and notebook 08; returns its run directory."""
    def train(run_dir):
        train_rejection_sampling(RejectionSamplingConfig(**{**QUICK_RS, "seed": seed}), init=quick_run("sentiment", "sft", seed),
                           reward=quick_run("sentiment", "reward", seed), out=run_dir, quiet=True)
    return quick_extra("sentiment", "rejection-sampling", train, seed)


def quick_rounds(method=RoundsConfig.method, seed=0):
    """Three quick rounds from the cached quick SFT model and reward model of `seed`, trained once per cache of
    quick runs and shared by the tests and notebook 08; returns the rounds run directory."""
    def train(run_dir):
        run_rounds(rounds_config(True, method=method, seed=seed), init=quick_run("sentiment", "sft", seed),
               reward=quick_run("sentiment", "reward", seed), out=run_dir, resume=True, quiet=True)
    return quick_extra("sentiment", f"rounds-{method}", train, seed)


def quick_rlaif(seed=0):
    """The quick labeler, its AI labels and the reward model on them, cached beside the quick pipeline for the
    tests and notebook 09: {sft, human, human-small, labels, ai}."""
    base = {"sft": quick_run("sentiment", "sft", seed), "reward": quick_run("sentiment", "reward", seed)}
    make = lambda name, train: quick_extra("sentiment", f"rlaif-{name}", train, seed)  # noqa: E731
    return {"sft": base["sft"], **train_reward_models(base, QUICK_SEED_COMPARISONS, seed, make)}


def quick_rlaif_ppo(seed=0):
    """PPO at the quick pipeline's settings against the quick reward model on AI labels (`quick_rlaif`), cached
    beside the quick pipeline for the tests; returns its run directory."""
    rms = quick_rlaif(seed)
    return quick_extra("sentiment", "rlaif-ppo-ai", lambda d: train_ppo(PPOConfig(**QUICK["ppo"], seed=seed), init=rms["sft"],
                                                           reward=rms["ai"], out=d, quiet=True), seed)


def quick_safe_rlhf(seed=0):
    """The quick runs tests and notebook 09 share, cached beside the quick pipeline: {sft, reward, cost, safe-rlhf}."""
    base = {"sft": quick_run("assistant", "sft", seed), "reward": quick_run("assistant", "reward", seed)}
    make = lambda name, train: quick_extra("assistant", name, train, seed)  # noqa: E731
    return {**base, **train_safe(base, quick=True, seed=seed, harm_share=0.02, make=make)}


def quick_mixed(seed=0):
    """The `mixed` baseline at quick settings, cached beside the quick pipeline for the tests: {mixed-rm, mixed}."""
    return train_mixed(quick_safe_rlhf(seed), quick=True, seed=seed,
                       make=lambda name, train: quick_extra("assistant", name, train, seed))


def quick_p3o(seed=0):
    """P3O (joint clip) at the quick PPO settings, cached beside the quick pipeline for tests and notebook 09."""
    return quick_extra("sentiment", "pairwise-ppo", lambda d: train_method(
        "p3o-joint", {**QUICK["ppo"], "seed": seed}, quick_run("sentiment", "sft", seed), quick_run("sentiment", "reward", seed), d),
        seed)


def quick_grpo(seed=0):
    """GRPO at QUICK_GRPO from the cached quick SFT and reward models of `seed`, cached beside the quick pipeline
    for the tests; returns its run directory."""
    return quick_extra("sentiment", "grpo", lambda d: train_grpo(
        GRPOConfig(**QUICK_GRPO, seed=seed), init=quick_run("sentiment", "sft", seed),
        reward=quick_run("sentiment", "reward", seed), out=d, quiet=True), seed)
