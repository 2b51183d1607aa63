"""Toy worlds whose hidden "human preference" is known exactly.

Real RLHF never sees the human's preference function; it sees demonstrations and noisy
comparisons. A `Task` gives every stage exactly that, and keeps the preference itself —
`gold_reward(prompt, response)` — hidden from training, so the claims of the literature
(SFT < RLHF under human judgement, reward hacking without a KL penalty, ROUGE disagreeing
with people, best-of-n overoptimisation) can be *measured* instead of assumed.

The interface every stage uses:

    task.name, task.tokenizer          a WordTokenizer over the task's fixed word list
    task.max_response_tokens           suggested max_new_tokens for generation
    task.block_size                    suggested model context (prompt + response fit)
    task.pretraining_corpus(rng)       web-like documents of mixed quality
    task.demonstrations(rng)           [(prompt, completion)]: decent but imperfect human answers
    task.human_policy(prompts, rng)    the demonstrators as a policy (fresh answers)
    task.prompts("train" | "eval")     fixed, disjoint prompt sets
    task.gold_reward(prompt, response) the hidden judge, a float in [-1, 1]
    task.gold_cost                     None, or on a task with a harm criterion (assistant) a method
                                       gold_cost(prompt, response): > 0 harmful, ≤ 0 harmless
    task.reference(prompt)             one human-written reference, for ROUGE / BLEU

Gold rewards share one scale on every task: -1 for degenerate text (not well formed,
unfinished, wrong format, unknown words), about -0.9…1 for well-formed text, 1 the best.
Prompts are a fixed pool (built from a constant seed, so the split never moves); eval
prompts never start a corpus document or a demonstration.
"""

import functools
import zlib
from abc import ABC, abstractmethod

import numpy as np

from minirlhf.lm.tokenizer import WordTokenizer

TASK_NAMES = ("sentiment", "summarize", "assistant", "arithmetic")


def pick(rng, seq):
    """One element of a sequence (a Python object, unlike rng.choice's NumPy scalars)."""
    return seq[int(rng.integers(len(seq)))]


def prompt_rng(prompt):
    """A generator seeded by the prompt text (crc32, stable across runs and machines)."""
    return np.random.default_rng(zlib.crc32(prompt.encode("utf-8")))


def length_penalty(n_words, lo, hi, per_word_short, per_word_long):
    """0 inside [lo, hi] words, growing linearly with each word outside."""
    return per_word_short * max(0, lo - n_words) + per_word_long * max(0, n_words - hi)


class Task(ABC):
    """A toy world: prompts, web text, demonstrators, and a hidden gold judge."""

    name = ""
    max_response_tokens = 0  # suggested max_new_tokens when sampling responses
    block_size = 0  # suggested GPT context: <bos> + longest prompt + max_response_tokens + <eos> fit
    n_eval_prompts = 500  # held-out prompts for evaluation
    n_demonstrations = 2000  # default size of the SFT set
    n_documents = 4000  # default size of the pretraining corpus
    gold_cost = None  # no harm criterion here; a task with one defines gold_cost(prompt, response)

    def __init__(self):
        self.tokenizer = WordTokenizer(sorted(self.words()))
        pool = self.prompt_pool()
        if len(set(pool)) != len(pool):
            raise ValueError(f"task {self.name}: prompt_pool() must return distinct prompts")
        self._prompts = {"eval": pool[:self.n_eval_prompts], "train": pool[self.n_eval_prompts:]}

    def prompts(self, split):
        """The fixed train or eval prompts (a new list each call)."""
        if split not in self._prompts:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return list(self._prompts[split])

    def demonstrations(self, rng, n=None):
        """[(prompt, completion)]: one human answer for each of n distinct training prompts."""
        n = self.n_demonstrations if n is None else n
        train = self._prompts["train"]
        prompts = [train[i] for i in rng.permutation(len(train))[:n]]
        return list(zip(prompts, self.human_policy(prompts, rng)))

    def pretraining_corpus(self, rng, n_docs=None):
        """Web-like documents: training prompts continued with text of mixed quality."""
        n_docs = self.n_documents if n_docs is None else n_docs
        train = self._prompts["train"]
        return [self.web_document(pick(rng, train), rng) for _ in range(n_docs)]

    def human_policy(self, prompts, rng):
        """The demonstrators as a policy: a fresh decent-but-imperfect answer per prompt."""
        return [self.demonstration(p, rng) for p in prompts]

    # ------------------------------------------------ what each task defines
    @abstractmethod
    def words(self):
        """Every word the task's text can contain (the tokenizer's vocabulary)."""

    @abstractmethod
    def prompt_pool(self):
        """All prompts, distinct, in a fixed order; the first n_eval_prompts are the eval split."""

    @abstractmethod
    def demonstration(self, prompt, rng):
        """One human-written answer, as a labeler would write it."""

    @abstractmethod
    def web_document(self, prompt, rng):
        """One pretraining document starting with `prompt`."""

    @abstractmethod
    def gold_reward(self, prompt, response):
        """The hidden human judgement, in [-1, 1]."""

    @abstractmethod
    def reference(self, prompt):
        """One human-written reference answer (deterministic per prompt)."""

    def __repr__(self):
        return f"<Task {self.name}: vocab {self.tokenizer.vocab_size}, " \
               f"{len(self._prompts['train'])} train / {len(self._prompts['eval'])} eval prompts>"


@functools.lru_cache(maxsize=None)
def get_task(name):
    """The built-in task called `name` (one shared instance per name)."""
    if name == "sentiment":
        from minirlhf.world.tasks.sentiment import SentimentTask
        return SentimentTask()
    if name == "summarize":
        from minirlhf.world.tasks.summarize import SummarizeTask
        return SummarizeTask()
    if name == "assistant":
        from minirlhf.world.tasks.assistant import AssistantTask
        return AssistantTask()
    if name == "arithmetic":
        from minirlhf.world.tasks.arithmetic import ArithmeticTask
        return ArithmeticTask()
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
