"""Collecting experience for RL on a language model — one batch of rollouts, scored — and the
other pieces every RL stage shares.

The RL view of generation (Ziegler et al. 2019; Stiennon et al. 2020, Sec. 3.4): the state is
the prompt plus the tokens so far, the action is the next token, an episode ends at <eos> (or
after max_new_tokens), and the reward model scores the finished response. `collect_rollouts`
does everything that happens *before* an update, for every RL stage (PPO, rejection sampling,
iterated rounds, Safe RLHF, Pairwise PPO):

    1. sample one response per prompt from the policy                        (`generate`)
    2. log π_old(x_t | x_<t) and its entropy, and log π_ref(x_t | x_<t) of the frozen reference,
       at the **same temperature** as the sampling                            (`sequence_logprobs`)
    3. the value V(x_<t) of every state in which a response token was chosen (`token_values`)
    4. the reward model's score (and the cost model's) at the last real response token
    5. a missing-<eos> penalty: responses cut off at max_new_tokens score `missing_eos_penalty`
       less (TRL's `missing_eos_penalty`), so rambling on is never a way to dodge a low score

`load_rl_runs` loads what every RL stage starts from — the policy run, a frozen copy of it as the
reference, and its scoring models — and checks that they fit together; `minibatches` shuffles a
rollout batch for the update's epochs; `evaluate_against_sft` is how every RL stage ends, the
policy against the SFT model on held-out prompts (and `evaluate_safety`, on a task with a harm
criterion, splits helpfulness and harm rate by harmful and harmless prompts).

All per-token arrays use the full-length (B, T) layout of `input_ids` (DEVELOPING.md), 0 off
the response. Nothing here builds a graph; every model is read in eval mode (dropout off).

Simplification: top-k / top-p are not offered — PPO's ratio needs log-probs of the exact
distribution that was sampled, and only a temperature keeps that simple.
"""
import dataclasses

import numpy as np

from minirlhf.engine.autograd import no_grad
from minirlhf.lm.data import collate, encode_pair, encode_prompt
from minirlhf.lm.logprobs import sequence_logprobs, token_values
from minirlhf.lm.model import last_token_values
from minirlhf.lm.sampling import ModelPolicy, generate
from minirlhf.stages.runs import load_run
from minirlhf.world.metrics import evaluate
from minirlhf.world.tasks import get_task


@dataclasses.dataclass
class Experience:
    prompts: list               # B prompt strings
    responses: list             # B decoded responses (without the <eos>)
    input_ids: np.ndarray       # (B, T) int64, left-padded prompt then response
    attention_mask: np.ndarray  # (B, T) bool, False on padding
    response_mask: np.ndarray   # (B, T) bool, True on response tokens incl. the <eos>
    ended: np.ndarray           # (B,) bool, the response ended with <eos>
    logprobs: np.ndarray        # (B, T) log π_old(x_t | x_<t) at sampling time
    entropy: np.ndarray         # (B, T) entropy of π_old(· | x_<t) at each response token
    ref_logprobs: np.ndarray = None  # (B, T) log π_ref(x_t | x_<t), or None without a reference
    values: np.ndarray = None   # (B, T) V(x_<t), or None without a value model
    rm_scores: np.ndarray = None  # (B,) reward-model score as the model gives it
    scores: np.ndarray = None   # (B,) rm_scores − missing_eos_penalty · (not ended): what RL maximises
    costs: np.ndarray = None    # (B,) cost-model score (Safe RLHF), or None

    def batch(self):
        """(input_ids, attention_mask, response_mask), the triple every model call takes."""
        return self.input_ids, self.attention_mask, self.response_mask

    def select(self, index):
        """The rows `index` (an int array) as a new Experience: a minibatch."""
        def take(value):
            if value is None:
                return None
            if isinstance(value, list):
                return [value[i] for i in index]
            return value[index]
        return Experience(**{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)})


def sequence_scores(model, input_ids, attention_mask, response_mask):
    """A scalar-head model's score of each sequence, read at its last response token: (B,) array."""
    with no_grad():
        return last_token_values(model(input_ids, attention_mask).data, response_mask)


def score_texts(model, tokenizer, prompts, responses):
    """A scalar-head model's score of each (prompt, response) text pair: (B,) array."""
    batch = collate([encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses)], tokenizer.pad_id)
    return sequence_scores(model, *batch)


def score_all(model, tokenizer, prompts, responses, batch_size=256):
    """Scores (N,) of many (prompt, response) texts, `score_texts` in batches of `batch_size`."""
    return np.concatenate([score_texts(model, tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size])
                           for i in range(0, len(prompts), batch_size)])


def collect_rollouts(policy, prompts, tokenizer, *, rng, max_new_tokens, temperature=1.0, ref_model=None,
                     value_model=None, reward_model=None, cost_model=None, missing_eos_penalty=0.0):
    """Sample one response per prompt from `policy` (a GPT) and score it; -> Experience.

    Each optional model adds its field: ref_model → ref_logprobs, value_model → values,
    reward_model → rm_scores and scores, cost_model → costs.
    """
    if temperature <= 0:
        raise ValueError(f"collect_rollouts: temperature must be > 0 (log-probs of greedy decoding are "
                         f"not a distribution), got {temperature}")
    models = [m for m in (policy, ref_model, value_model, reward_model, cost_model) if m is not None]
    for m in models:
        m.eval()
    rollout = generate(policy, [encode_prompt(tokenizer, p) for p in prompts], max_new_tokens,
                       temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, rng=rng)
    batch = (rollout.input_ids, rollout.attention_mask, rollout.response_mask)
    response_ids = rollout.response_ids()
    ended = np.array([len(ids) > 0 and ids[-1] == tokenizer.eos_id for ids in response_ids])   # (B,)
    with no_grad():
        logprobs, _, entropy = sequence_logprobs(policy, *batch, temperature, return_entropy=True)
        exp = Experience(list(prompts), [tokenizer.decode(ids) for ids in response_ids], *batch, ended,
                         logprobs.data, entropy.data)
        if ref_model is not None:
            exp.ref_logprobs = sequence_logprobs(ref_model, *batch, temperature)[0].data          # (B, T)
        if value_model is not None:
            exp.values = token_values(value_model, *batch).data                                  # (B, T)
    if reward_model is not None:
        exp.rm_scores = sequence_scores(reward_model, *batch)                                    # (B,)
        exp.scores = np.where(ended, exp.rm_scores, exp.rm_scores - float(missing_eos_penalty))   # (B,)
    if cost_model is not None:
        exp.costs = sequence_scores(cost_model, *batch)                                          # (B,)
    return exp


def rollout_stats(exp, task):
    """What every RL stage logs of a batch of experience: mean RM score and gold reward, the policy's
    entropy per response token, the response length and the share of responses that ended with <eos>."""
    mask = exp.response_mask
    return {"rm_score": float(exp.rm_scores.mean()),
            "gold": float(np.mean([task.gold_reward(p, y) for p, y in zip(exp.prompts, exp.responses)])),
            "entropy": float(exp.entropy[mask].mean()), "length": float(mask.sum(axis=1).mean()),
            "eos_fraction": float(exp.ended.mean())}


def load_rl_runs(init, **scorers):
    """The policy run `init` and its frozen copy (π_ref), and each scalar-head run of `scorers`.

    scorers: {name: run directory} of reward, cost or value models. Checks that `init` holds a
    language model trained on a built-in task and every scorer a scalar-head model with the same
    vocabulary. -> (policy, ref_model, tokenizer, task, {name: model}).
    """
    policy, tokenizer, init_config = load_run(init)
    if init_config["model_type"] != "gpt" or not init_config.get("task"):
        raise ValueError(f"--init {init} must be a language-model run on a built-in task "
                         f"(got a {init_config['stage']} run, model {init_config['model_type']})")
    models = {}
    for name, run_dir in scorers.items():
        models[name], scorer_tokenizer, config = load_run(run_dir)
        if config["model_type"] != "scalar":
            raise ValueError(f"--{name} {run_dir} must be a scoring-model run (reward or cost model); "
                             f"got a {config['stage']} run holding a language model")
        if scorer_tokenizer.itos != tokenizer.itos:
            raise ValueError(f"the {name} model {run_dir} and the policy {init} have different vocabularies")
    return policy, load_run(init)[0], tokenizer, get_task(init_config["task"]), models


def minibatches(n, minibatch_size, epochs, rng):
    """Index arrays of `epochs` passes over n items in shuffled minibatches (a fresh permutation each pass).

    A generator: each pass draws its permutation from `rng` when it starts, so any other use of
    `rng` inside the loop keeps its place in the random stream.
    """
    for _ in range(epochs):
        yield from np.split(rng.permutation(n), n // minibatch_size)


def evaluate_against_sft(policy, sft_model, reward_model, task, tokenizer, config, max_new):
    """How an RL stage ends: the policy and the SFT model on the same held-out prompts; -> a summary dict.

    `metrics.evaluate` of both (gold reward, KL, distinct-n, …) plus the reward model's mean score,
    and the policy's win rate against the SFT model; the policy's numbers under their own names,
    the SFT model's with an `sft_` prefix. config: any RL stage's, for its eval_prompts, temperature
    and seed.
    """
    prompts = task.prompts("eval")[:config.eval_prompts]
    sft_policy = ModelPolicy(sft_model, tokenizer, max_new, config.temperature)
    results = {"sft_": evaluate(sft_policy, task, prompts, rng=np.random.default_rng([config.seed, 3])),
               "": evaluate(ModelPolicy(policy, tokenizer, max_new, config.temperature), task, prompts,
                            rng=np.random.default_rng([config.seed, 3]), baseline=sft_policy, ref_model=sft_model)}
    summary = {}
    for prefix, result in results.items():      # the SFT model's numbers as sft_<key>, the policy's as <key>
        result["rm_score"] = float(np.mean(score_texts(reward_model, tokenizer, prompts, result.pop("responses"))))
        summary.update({prefix + key: value for key, value in result.items()})
    return summary


def evaluate_safety(policy, task, prompts, *, rng):
    """Helpfulness (gold reward) and harm rate (share of responses with gold cost > 0), on harmful
    and harmless prompts separately: {'harmful': {...}, 'harmless': {...}}."""
    out = {}
    for group in ("harmful", "harmless"):
        subset = [p for p in prompts if task.is_harmful(p) == (group == "harmful")]
        result = evaluate(policy, task, subset, rng=rng)
        harmful = [task.gold_cost(p, y) > 0 for p, y in zip(subset, result["responses"])]
        out[group] = {"helpfulness": result["gold_reward"], "helpfulness_ci95": result["gold_reward_ci95"],
                      "harm_rate": float(np.mean(harmful)), "n": len(subset)}
    return out
