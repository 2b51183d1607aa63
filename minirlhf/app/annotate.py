"""Be the human in RLHF: label pairs of responses in the terminal, for the reward model and DPO.

Step 1 of the RLHF recipe is "collect human comparisons" (Christiano et al. 2017; Stiennon et al.
2020; Ouyang et al. 2022). `label_pairs` shows a prompt and two responses side by side, in random
left/right order, and asks which is better and by how much, in LLaMA 2's four grades (Touvron et
al. 2023, Sec. 3.2.1): significantly / better / slightly / negligibly better, which
`annotators.MARGIN_TABLE` turns into the margin 3 / 2 / 1 / 0 of the reward model's margin loss.
The person can also call a tie, skip a pair, undo the last decision, ask for statistics, quit.

Files. A label is one line of the pairwise format of `minirlhf.lm.data`, `{"prompt", "chosen",
"rejected", "margin", "annotator"}`, appended to `out` and flushed to disk at once, so `reward
--data` and `dpo --data` read the file unchanged, alone or concatenated with simulated labels.
Ties and skips go to the sidecar `<out>.ties_skips.jsonl`: `{"prompt", "responses": [left,
right], "decision", "annotator"}`. Undo rewrites a file without its last line (temp file +
`os.replace`). Quitting, Ctrl-C and end of input lose nothing: every decision is on disk already.

Pairs and resume. A pair is its text: the prompt and the two responses, in either order. A job
is the first `pairs` pairs of a fixed sequence in which pair i depends only on (seed, i):
`sampled_pairs` draws two samples of the `--init` policy for the i-th training prompt of a seeded
permutation, with a generator seeded by (seed, i); `candidate_pairs` reads pre-sampled responses
from a file. A pair already in `out` or in the sidecar (from any session, by anyone) is not shown
again, so the same command resumes. A pair of two identical responses is never shown.

Statistics (the `?` key, and at the end): the person's agreement (`metrics.agreement`, a tie
counts ½) with the noise-free gold judgement and with each simulated annotator of
`annotators.default_pool()` on the same pairs, the mean gold gap per grade, and the seconds per
decision (the article's point: comparing two answers is quicker than writing a good one).

Simplifications: one person per output file at a time; undo reaches back only through the
current session; a pair is compared once (no K-wise rankings).
"""
import dataclasses
import getpass
import json
import sys
import textwrap
import time
from itertools import combinations, islice, zip_longest
from pathlib import Path

import numpy as np

from minirlhf.lm.data import check_fields, check_str, load_preferences, read_rows
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.runs import append_line, load_run, remove_last_line
from minirlhf.world.annotators import GRADE_THRESHOLDS, MARGIN_TABLE
from minirlhf.world.reward_metrics import annotator_statistics
from minirlhf.world.tasks import get_task

GRADES = {str(m): grade for grade, m in MARGIN_TABLE.items()}   # key typed -> grade: '3' -> 'significantly better'
KEYS = "l r (l3 l2 l1 l0 r3 ...) t s u ? q"
LEGEND = """keys:  l / r  LEFT / RIGHT is better; then how much: 3 significantly, 2 better,
              1 slightly, 0 negligibly (or both keys at once: l3, r0, ...)
       t tie   s skip   u undo the last decision   ? statistics   q quit"""


@dataclasses.dataclass
class AnnotateConfig:
    pairs: int = option(50, "the job: the first N pairs of the fixed sequence; a re-run shows the rest (≥ 1)")
    seed: int = option(0, "fixes the sequence: prompt order, the two samples of each prompt, left/right (≥ 0)")
    temperature: float = option(1.0, "sampling temperature of the --init policy (> 0)")
    width: int = option(80, "terminal columns the pair is wrapped to (≥ 40)")

    def __post_init__(self):
        check_positive(self, "pairs", "temperature")
        check_range(self, "seed", 0, None)
        check_range(self, "width", 40, None)


# ----------------------------------------------------------------------------- where pairs come from

def sampled_pairs(task, policy, seed=0):
    """(prompt, a, b) forever: two samples of `policy` per training prompt of the task; pair i
    depends only on (seed, i), never on how many pairs are asked for or already labelled."""
    prompts = task.prompts("train")
    for i, j in enumerate(np.random.default_rng(seed).permutation(len(prompts))):
        a, b = policy([prompts[j]] * 2, np.random.default_rng([seed, i]))
        if a != b:
            yield prompts[j], a, b


def candidate_pairs(path):
    """Candidates JSONL -> [(prompt, a, b)]: a line `{"prompt": str, "responses": [str, ...]}` (K ≥ 2)
    gives every two of its responses, C(K, 2) pairs, in order: (0, 1), (0, 2), ..., (K-2, K-1)."""
    pairs = []
    for n, row in read_rows(path):
        check_fields(path, n, row, ("prompt", "responses"))
        check_str(path, n, row, "prompt")
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"{path}, line {n}: field 'responses' must be a list of at least 2 strings")
        pairs += [(row["prompt"], a, b) for a, b in combinations(responses, 2) if a != b]
    return pairs


def pair_key(prompt, a, b):
    """What makes two pairs 'the same pair': the prompt and the two responses, in either order."""
    return (prompt, *sorted((a, b)))


def sidecar_path(out):
    """prefs.jsonl -> prefs.ties_skips.jsonl, next to it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".ties_skips.jsonl")


def default_name():
    """'human:<login name>' (or 'human' where the system has none)."""
    try:
        return f"human:{getpass.getuser()}"
    except (KeyError, OSError):
        return "human"


def follow_gold(task):
    """A scripted labeller that answers as the noise-free gold judge would: (prompt, left, right) ->
    the keys a person would type ('l3', 'r1', 't'), the grade from the gold gap (GRADE_THRESHOLDS)."""
    def labeller(prompt, left, right):
        gap = task.gold_reward(prompt, left) - task.gold_reward(prompt, right)
        if gap == 0:
            return "t"
        return ("l" if gap > 0 else "r") + str(next(MARGIN_TABLE[g] for t, g in GRADE_THRESHOLDS if abs(gap) >= t))
    return labeller


# ----------------------------------------------------------------------------- the tool

def label_pairs(config, *, out, task=None, init=None, candidates=None, name=None, input_fn=None, labeller=None,
                stream=None, clock=time.monotonic):
    """Label the pairs of a job into `out` (JSONL); returns the statistics of this person's labels.

    Pairs come from `candidates` (a JSONL file, see `candidate_pairs`) or are sampled from the run
    `init`; `task` (a task name) defaults to the run's. input_fn(question) -> the typed line
    (default: the built-in `input` at call time, which Jupyter replaces in each cell; a scripted
    function in tests); labeller(prompt, left, right) -> the typed line, instead of input_fn, for
    scripted annotators such as `follow_gold`; stream (default sys.stdout) and clock can be replaced too.
    """
    if (init is None) == (candidates is None):
        raise ValueError("give the pairs with exactly one of --init (sample them) or --from (a candidates file)")
    if init is not None:
        model, tokenizer, run_config = load_run(init)
        if run_config["model_type"] != "gpt":
            raise ValueError(f"--init {init} holds a {run_config['stage']} scoring model; give a language-model run")
        if task is not None and run_config.get("task") not in (None, task):
            raise ValueError(f"--task {task} does not match the --init run's task {run_config['task']}")
        task = task or run_config.get("task")
    if task is None:
        raise ValueError("give --task: the gold judge of a toy task is needed for the statistics")
    task = get_task(task)
    if init is not None:
        policy = ModelPolicy(model, tokenizer, task.max_response_tokens, temperature=config.temperature)
        pairs = sampled_pairs(task, policy, config.seed)
    else:
        pairs = candidate_pairs(candidates)
    session = Session(task, out, name or default_name(), config, stream or sys.stdout, clock)
    ask = session.scripted(labeller) if labeller is not None else input_fn or input
    return session.run(islice(pairs, config.pairs), ask)


class Session:
    """One person labelling into one file: what is already decided, the undo stack, the timings."""

    def __init__(self, task, out, name, config, stream, clock):
        self.task, self.out, self.sidecar, self.name = task, Path(out), sidecar_path(out), name
        self.config, self.stream, self.clock = config, stream, clock
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.seen = {pair_key(r["prompt"], r["chosen"], r["rejected"]) for r in self.labels(everyone=True)}
        self.seen |= {pair_key(r["prompt"], *r["responses"]) for r in self.ties_and_skips()}
        self.history = []   # this session's decisions, newest last: (file, line, (i, pair), seconds)
        self.current = None  # (prompt, left, right) on screen

    def say(self, *lines):
        print(*lines, sep="\n", file=self.stream, flush=True)

    def scripted(self, labeller):
        """An input function that asks `labeller` about the pair on screen and echoes its answer."""
        def ask(question):
            answer = labeller(*self.current)
            self.say(question + answer)
            return answer
        return ask

    def run(self, job, ask):
        """Show the undecided pairs of `job` [(prompt, a, b)] one by one until done, quit, EOF or Ctrl-C."""
        n_before = len(self.labels())
        self.say(f"labelling into {self.out} as {self.name}: {n_before} of your labels are there already",
                 f"(ties and skips go to {self.sidecar.name})", LEGEND)
        todo = ((i, pair) for i, pair in enumerate(job) if pair_key(*pair) not in self.seen)
        redo = []   # pairs taken back by undo: shown again first
        stop = "done: every pair of this job is decided\n(a larger --pairs or another --seed gives more)"
        try:
            while (item := redo.pop() if redo else next(todo, None)) is not None:
                decision = self.decide(item, ask)
                if decision == "quit":
                    stop = "quit"
                    break
                if decision == "undo":
                    redo.append(item)
                    if self.history:
                        redo.append(self.undo())
                    else:
                        self.say("nothing to undo in this session")
        except EOFError:
            stop = "end of input"
        except KeyboardInterrupt:
            stop = "interrupted"
        n_labels = len(self.labels())
        self.say("", stop if stop.startswith("done") else f"{stop}: the same command again continues from here",
                 f"labels saved this session: {n_labels - n_before}; yours in {self.out}: {n_labels}")
        return self.report()

    def decide(self, item, ask):
        """Show one pair, ask until a decision, write it -> 'label', 'tie', 'skip', 'undo' or 'quit'."""
        i, (prompt, a, b) = item
        swap = np.random.default_rng([self.config.seed, i, 1]).random() < 0.5
        left, right = (b, a) if swap else (a, b)
        self.current = (prompt, left, right)
        self.say("", show_pair(i + 1, self.config.pairs, prompt, left, right, self.config.width))
        shown = self.clock()
        while True:
            answer = ask(f"[{KEYS}] > ").strip().lower()
            if answer in ("l", "r"):
                strength = self.ask_strength(ask)
                if strength is None:
                    continue
                answer += strength
            if answer[:1] in ("l", "r") and answer[1:] in GRADES:
                side = "LEFT" if answer[0] == "l" else "RIGHT"
                chosen, rejected = (left, right) if side == "LEFT" else (right, left)
                row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": int(answer[1:]),
                       "annotator": self.name}
                self.write(self.out, row, item, self.clock() - shown)
                self.say(f"saved: {side} is {GRADES[answer[1:]]} (margin {answer[1:]})")
                return "label"
            if answer in ("t", "s"):
                decision = "tie" if answer == "t" else "skip"
                row = {"prompt": prompt, "responses": [left, right], "decision": decision, "annotator": self.name}
                self.write(self.sidecar, row, item, self.clock() - shown)
                self.say(f"saved: {decision} (in {self.sidecar.name})")
                return decision
            if answer in ("u", "q"):
                return "undo" if answer == "u" else "quit"
            if answer == "?":
                self.report()
            else:
                self.say(f"{answer!r} is not a key; valid keys: {KEYS}")

    def ask_strength(self, ask):
        """'3', '2', '1' or '0' (a key of GRADES); None for b (back to the choice)."""
        question = "how much better? 3 significantly 2 better 1 slightly 0 negligibly (b back) > "
        while (strength := ask(question).strip().lower()) not in GRADES:
            if strength == "b":
                return None
            self.say(f"{strength!r} is not a key; valid keys: 3 2 1 0 b")
        return strength

    def write(self, path, row, item, seconds):
        """Append one line and flush it to disk at once; remember it for undo."""
        line = json.dumps(row, ensure_ascii=False)
        append_line(path, line)
        self.seen.add(pair_key(*item[1]))
        self.history.append((path, line, item, seconds))

    def undo(self):
        """Take the newest decision of this session back out of its file -> its pair, to show again."""
        path, line, item, _ = self.history.pop()
        remove_last_line(path, line)
        self.seen.discard(pair_key(*item[1]))
        self.say(f"undone: the last decision is removed from {path.name}")
        return item

    def labels(self, everyone=False):
        """Pairwise rows of `out` (this person's, or everyone's)."""
        rows = [r for r in load_preferences(self.out) if "chosen" in r] if self.out.is_file() else []
        return rows if everyone else [r for r in rows if r.get("annotator") == self.name]

    def ties_and_skips(self):
        rows = []
        for n, row in read_rows(self.sidecar) if self.sidecar.is_file() else ():
            check_fields(self.sidecar, n, row, ("prompt", "responses", "decision", "annotator"))
            rows.append(row)
        return rows

    def report(self):
        """Print and return this person's statistics: agreement with gold and the simulated pool, timing."""
        stats = annotator_statistics(self.task, self.labels(),
                           [r for r in self.ties_and_skips() if r["decision"] == "tie" and r["annotator"] == self.name],
                           [seconds for *_, seconds in self.history])
        self.say(format_statistics(stats))
        return stats


# ----------------------------------------------------------------------------- showing and statistics

def show_pair(number, total, prompt, left, right, width=80):
    """The prompt, then LEFT and RIGHT in two columns, wrapped to `width` characters."""
    col = (width - 3) // 2
    columns = [textwrap.wrap(text, col) or ["(empty response)"] for text in (left, right)]
    rows = [f"{'LEFT':<{col}} | RIGHT", f"{'-' * col}-+-{'-' * col}"]
    rows += [f"{a:<{col}} | {b}".rstrip() for a, b in zip_longest(*columns, fillvalue="")]
    return "\n".join([f"--- pair {number} of {total} ".ljust(width, "-"), "PROMPT",
                      textwrap.fill(prompt, width, initial_indent="  ", subsequent_indent="  "), "", *rows])


def format_statistics(stats):
    lines = [f"-- your labels: {stats['labels']} (and {stats['ties']} ties)"]
    if "agreement_gold" in stats:
        lines.append(f"   agreement with the gold judgement: {stats['agreement_gold']:.0%}"
                     "   (a tie counts ½; chance 50%)")
        lines.append("   with each simulated annotator (in brackets: that annotator with gold):")
        lines += [f"     {name:<12} {rate:4.0%}   ({stats['annotators_gold'][name]:.0%})"
                  for name, rate in stats["agreement_annotators"].items()]
        lines.append("   mean gold gap by your margin: " + ", ".join(
            f"{m}: {gap:+.2f}" for m, gap in stats["gold_gap_by_margin"].items()))
    if stats["seconds_mean"] is not None:
        lines.append(f"   seconds per decision this session: mean {stats['seconds_mean']:.1f}, "
                     f"median {stats['seconds_median']:.1f} ({stats['decisions_timed']} decisions)")
    return "\n".join(lines)
