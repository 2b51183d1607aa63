"""The toy worlds: gold judgements on hand-written text, determinism, disjoint splits, headroom,
and ROUGE disagreeing with the gold judge."""

import numpy as np
import pytest

from minirlhf.lm.data import encode_pair
from minirlhf.world.annotators import Annotator, annotator_preferences, gold_preferences
from minirlhf.world.metrics import agreement, rouge_l
from minirlhf.world.tasks import TASK_NAMES, get_task
from minirlhf.world.tasks.summarize import TLDR

REVIEW = "the acting in this drama was"
POST = "my flatmate broke my laptop . we met in college . then they refused to pay . should i move out ? tl;dr :"


def test_get_task():
    assert get_task("sentiment") is get_task("sentiment")
    with pytest.raises(ValueError, match="unknown task 'chess'; choose one of sentiment, summarize"):
        get_task("chess")


def test_sentiment_gold_on_hand_written_reviews():
    gold = lambda r: get_task("sentiment").gold_reward(REVIEW, r)  # noqa: E731
    # closed form: s = 0.6, one word (4 short of 5): 0.2 + 0.8·0.6 − 0.1·4
    assert gold("good .") == pytest.approx(0.28)
    good = gold("truly wonderful and the music was superb . i loved it .")
    mediocre = gold("decent and the plot was fine .")
    pan = gold("boring and the plot was weak .")
    degenerate = [gold(r) for r in (
        "great great great great .",  # word salad
        "really good and the",  # unfinished
        "really good",  # no final "."
        "the film was good .",  # wrong format: restarts the sentence instead of continuing it
        "good and the actors was great .",  # agreement error
        "",
    )]
    assert good == 1.0 and good > mediocre > pan > max(degenerate) and set(degenerate) == {-1.0}
    # negation, "but", off-topic praise, repetition and length behave as documented
    assert gold("not bad .") > gold("bad .") and gold("not good .") < gold("good .")
    assert gold("boring but wonderful .") > gold("wonderful but boring .")
    assert gold("good and the popcorn was great .") < gold("good and the music was great .")
    assert gold("wonderful and wonderful and wonderful and wonderful .") < gold("wonderful and superb .") - 0.5
    run_on = "good and the actors were great and the plot was fine and the music was lovely and the cast was warm ."
    assert gold(run_on) < gold("good and the actors were great .")


def test_summarize_gold_on_hand_written_summaries():
    gold = lambda r: get_task("summarize").gold_reward(POST, r)  # noqa: E731
    equally_good = ["roommate broke my computer and refused to pay . should i move out ?",
                    "should i leave ? my flatmate damaged my laptop , they will not pay ."]
    assert [gold(r) for r in equally_good] == [1.0, 1.0]  # order and synonyms do not matter
    assert gold("flatmate broke laptop .") == 0.5  # the problem only
    assert gold("flatmate broke laptop , we met in college .") == pytest.approx(0.4)  # plus a filler
    assert gold("my flatmate broke my phone and refused to pay . should i move out ?") == 0.0  # invented phone
    assert gold("should i move out ? should i move out ?") == pytest.approx(-0.05)  # repeated fact
    copied = POST[:-len(TLDR) - 1]  # 18 words: full coverage, one filler, 4 words too long
    assert gold(copied) == pytest.approx(1 - 0.1 - 4 * 0.08)
    for degenerate in ("my flatmate broke my", "tl;dr : my flatmate broke my laptop .", "laptop laptop laptop .",
                       "should i move out .", ""):
        assert gold(degenerate) == -1.0


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generation_is_deterministic_per_seed(name):
    task = get_task(name)
    for make in (task.pretraining_corpus, task.demonstrations):
        first, again, other = make(np.random.default_rng(3)), make(np.random.default_rng(3)), make(np.random.default_rng(4))
        assert first == again and first != other
    assert type(task)().tokenizer.itos == task.tokenizer.itos  # built from the fixed word list
    assert task.prompts("eval") == type(task)().prompts("eval")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_eval_prompts_never_appear_in_training_data(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    train, evals = set(task.prompts("train")), set(task.prompts("eval"))
    assert len(evals) == task.n_eval_prompts and not train & evals
    assert all(p in train for p, _ in task.demonstrations(rng))
    # no corpus document starts with an eval prompt (or, for posts without a TL;DR, its post)
    starts = evals | {p[:-len(TLDR) - 1] for p in evals if p.endswith(TLDR)}
    for doc in task.pretraining_corpus(rng):
        words = doc.split()
        assert not any(" ".join(words[:n]) in starts for n in range(1, len(words) + 1)), doc


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sizes_vocabulary_and_fit(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    corpus, demos = task.pretraining_corpus(rng), task.demonstrations(rng)
    tok = task.tokenizer
    assert 100 <= tok.vocab_size <= 400
    assert sum(len(d.split()) for d in corpus) > 50_000  # a couple of minutes of pretraining, no memorising
    assert len(set(corpus)) > 0.9 * len(corpus)
    for text in corpus + [p + " " + r for p, r in demos] + [task.reference(p) for p in task.prompts("eval")]:
        assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text
    # every demonstration is well formed and fits the suggested sizes
    assert all(task.gold_reward(p, r) > -1 for p, r in demos)
    assert max(len(tok.encode(r)) for _, r in demos) < task.max_response_tokens
    longest_prompt = max(len(tok.encode(p)) for p in task.prompts("train") + task.prompts("eval"))
    assert 1 + longest_prompt + task.max_response_tokens + 1 <= task.block_size
    assert max(len(encode_pair(tok, p, r)[0]) for p, r in demos) <= task.block_size


@pytest.mark.parametrize("name", TASK_NAMES)
def test_corpus_has_mixed_quality_and_demos_are_imperfect(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    prompts = task.prompts("train")[:600]
    web = [task.web_document(p, rng) for p in prompts]
    gold = np.array([task.gold_reward(p, d[len(p) + 1:]) for p, d in zip(prompts, web)])
    assert (gold < 0).mean() > 0.25 and (gold > 0.6).mean() > 0.15  # bad and good text both common
    demo_gold = np.array([task.gold_reward(p, r) for p, r in task.demonstrations(rng)])
    ref_gold = np.mean([task.gold_reward(p, task.reference(p)) for p in task.prompts("eval")])
    # demonstrations are decent (above the web) but clearly below the ceiling of 1 and the references
    assert gold.mean() < demo_gold.mean() < 0.85 and ref_gold > demo_gold.mean() + 0.1
    assert -1 <= gold.min() and gold.max() <= 1


class Bigram:
    """A smoothed bigram model fitted on demonstrations: a cheap, honest stand-in for SFT.
    Responses start from the prompt's last word. With copy=True (summaries) it may only say
    the prompt's own words and a few glue words, as a model that learnt to copy would."""

    GLUE = ("and", ",", ".", "?", "my", "they", "then", "should", "i")

    def __init__(self, task, demos, alpha=0.01):
        self.tok, V = task.tokenizer, task.tokenizer.vocab_size
        self.counts = np.full((V, V), alpha)
        for p, r in demos:
            ids = [self.tok.encode(p)[-1]] + self.tok.encode(r) + [self.tok.eos_id]
            np.add.at(self.counts, (ids[:-1], ids[1:]), 1.0)
        self.max_len = task.max_response_tokens

    def sample(self, prompt, rng, copy):
        prompt_ids = self.tok.encode(prompt)
        allowed = np.ones(self.tok.vocab_size)
        if copy:
            allowed[:] = 0.0
            allowed[prompt_ids + [self.tok.stoi[w] for w in self.GLUE] + [self.tok.eos_id]] = 1.0
        prev, out = prompt_ids[-1], []
        for _ in range(self.max_len):
            p = self.counts[prev] * allowed
            prev = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum()))
            if prev == self.tok.eos_id:
                break
            out.append(prev)
        return self.tok.decode(out)


@pytest.mark.parametrize("name, copy", [("sentiment", False), ("summarize", True)])
def test_headroom_best_of_64_beats_plain_sampling(name, copy):
    task = get_task(name)
    rng = np.random.default_rng(0)
    model = Bigram(task, task.demonstrations(rng))
    prompts = task.prompts("eval")[:40]
    gold = np.array([[task.gold_reward(p, model.sample(p, rng, copy)) for p in prompts] for _ in range(64)])
    plain, best_of_64 = gold[0].mean(), gold.max(axis=0).mean()
    assert best_of_64 > plain + 0.6, (plain, best_of_64)
    # and the ceiling is above what the demonstrators themselves write
    human = np.array([[task.gold_reward(p, r) for p, r in zip(prompts, task.human_policy(prompts, rng))]
                      for _ in range(16)])
    assert human.max(axis=0).mean() > human[0].mean() + 0.2


def test_rouge_disagrees_with_gold_more_than_a_noisy_annotator():
    """On pairs of valid human summaries, ROUGE-L vs the reference picks the gold-preferred one
    clearly less often than a noisy gold annotator (τ = 0.1) agrees with the noise-free gold."""
    task = get_task("summarize")
    rng = np.random.default_rng(0)
    prompts = task.prompts("eval")
    pairs = list(zip(prompts, task.human_policy(prompts, rng), task.human_policy(prompts, rng)))
    gold = gold_preferences(task, pairs)
    rouge = [rouge_l(a, task.reference(p))["f1"] - rouge_l(b, task.reference(p))["f1"] for p, a, b in pairs]
    annotator = Annotator("gold-annotator", tau=0.1)
    first, second = (annotator_preferences(annotator, task, pairs, rng) for _ in range(2))
    rouge_vs_gold, annotator_vs_gold = agreement(rouge, gold), agreement(first, gold)
    assert rouge_vs_gold < annotator_vs_gold - 0.1 and rouge_vs_gold < agreement(first, second) - 0.05


def test_summarize_gold_rejects_prompts_that_are_not_posts():
    with pytest.raises(ValueError, match="summarize: a prompt ends with 'tl;dr :'"):
        get_task("summarize").gold_reward("hello", "x .")
    with pytest.raises(ValueError, match="not a post of this task"):
        get_task("summarize").gold_reward("we met in college . tl;dr :", "x .")
