"""arithmetic: add two numbers and show the work — RL with verifiable rewards in miniature.

A prompt adds two numbers with the same number of digits, one token per digit; the response
works through the columns right to left, one step per column, then gives the answer:

    prompt    "4 7 + 3 8 ="
    response  "7 + 8 + 0 = 1 5 . 4 + 3 + 1 = 0 8 . answer 8 5"

    RESPONSE := { STEP "." } "answer" NUMBER
    STEP     := DIGIT "+" DIGIT "+" CARRY "=" DIGIT DIGIT    a column: its two digits, the carry
                                                             coming in (0 or 1), its sum in two digits
    NUMBER   := DIGIT { DIGIT }                              no leading zero (but "0" itself)
Why this format. A 2-layer model cannot add 3-digit numbers in one go (the answer's first digit
depends on every carry), but it can look up one column at a time: the scratchpad turns the sum
into a chain of one-digit facts (Nye et al. 2021, "Show your work"). Every step has the same
eight tokens — the carry always written, the sum always two digits ("0 8": carry out 0, digit 8)
— so within a step each token sits at a fixed distance from the ones it depends on, the
easiest pattern for attention to pick up. The carry is written where it is used, so the
demonstrators' slips — a dropped carry, a column added wrong by one — sit in single, visible
steps: SFT imitates them and RL has exactly these to fix. A fixed answer marker makes the
strict verifier a short parser; digits as tokens make the lax one concrete (and gameable).

Difficulty (`difficulty(prompt)`) is the number of digits per operand. Training uses 1–3 digits
(10% / 45% / 45% of demonstrations and corpus; the 50 one-digit training problems repeat); the
eval split holds 50 one-, 150 two-, 150 three- and 150 four-digit problems, interleaved so the
first 200 are 50 of each. Four-digit problems never appear in training: harder than anything seen.

Judges, all on one parser (`parse`):
  - gold_reward: -1 for text that is not a RESPONSE (empty, unfinished, two answers, text after
    the answer, a step of another shape); else 1 if the answer is a + b, 0 if not. Steps are
    not graded: a right answer after a wrong step counts, as when a teacher marks answers.
  - verify(prompt, response): the strict verifier, 1.0 exactly when gold_reward is 1, plus
    `format_reward` (0 by default) for any well-formed response: no learned proxy in between.
  - verify(..., lax=True): 1.0 when the digits of a + b appear as consecutive tokens anywhere in
    the response (a hasty grader's `answer in completion`). Gamed by hedging: "answer 8 4 8 5 8 6"
    passes for 85 (and for 84, 48, 86, ...), while strict reads one number, 848586; also by
    an answer inside a longer number ("answer 1 8 5"), before the marker, or in malformed text.
    Whatever strict accepts, lax accepts.

Demonstrators are careful but human: on each problem, with probability SLIP_RATE = 0.3 whatever
its size, they make one slip — drop a carry (or the final one: "answer 2 5" for 125) or add a
column wrong by one — and carry on consistently from it. Every slip changes the answer, so they
are right 70% of the time on every split and level. The web corpus mixes worked problems (right
and slipped), bare answers, cut-off, rambling and rude replies, and documents about numbers
(addition tables in the step format, number names, counting, place value).

Simplifications: addition only, both operands of one length (the columns line up unpadded)."""
import numpy as np

from minirlhf.world.tasks import Task, pick

TRAIN_LEVELS = {1: 0.1, 2: 0.45, 3: 0.45}  # digits per operand in training -> share of demonstrations and corpus
EVAL_LEVELS = {1: 50, 2: 150, 3: 150, 4: 150}  # digits per operand -> held-out problems
N_TRAIN_PER_LEVEL = {1: 50, 2: 7950, 3: 7950}  # every 1- and 2-digit problem not held out; 3-digit sampled
SLIP_RATE = 0.3  # probability that a demonstrator makes one slip (so DEMO_ACCURACY = 0.7)
DEMO_ACCURACY = 1.0 - SLIP_RATE
FACT_SHARE = 0.15  # share of pretraining documents that are arithmetic facts, not worked problems
DIGITS = tuple(str(d) for d in range(10))
NUMBER_NAMES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen").split()
TENS_NAMES = "twenty thirty forty fifty sixty seventy eighty ninety".split()
RAMBLE = ("i think it is", "maybe", "probably", "it should be", "not sure but", "my guess is", "roughly")
SUM_WORDS = ("is", "makes", "gives", "equals")
COMPARE = ("bigger", "smaller")
PLACES = ("ones", "tens", "hundreds", "thousands")
HOW_TO = ("to add two numbers , add the ones first , then the tens , then the hundreds .",
          "when a column adds up to ten or more , write its ones digit and carry 1 to the next column .",
          "always start with the ones column on the right .", "check your answer by adding again .")
BRUSH_OFFS = ("just use a calculator .", "no idea .", "do your own homework .", "that is easy .", "who cares .",
              "math is hard .")  # web replies that never answer


def digits(n):
    """A number as the task writes it: 125 -> "1 2 5"."""
    return " ".join(str(n))


def operands(prompt):
    """ "4 7 + 3 8 =" -> (47, 38); ValueError for text that is not a prompt of this task."""
    w = prompt.split()
    n = (len(w) - 2) // 2
    if (len(w) < 4 or len(w) % 2 or w[n] != "+" or w[-1] != "=" or not all(t in DIGITS for t in w[:n] + w[n + 1:-1])
            or (n > 1 and "0" in (w[0], w[n + 1]))):
        raise ValueError(f"arithmetic: a prompt is 'A + B =' with digits as tokens and A, B of equal length, "
                         f"got {prompt!r}")
    return int("".join(w[:n])), int("".join(w[n + 1:-1]))


def parse_number(tokens):
    """Digit tokens -> int, or None (empty, not digits, or a leading zero)."""
    if not tokens or not all(t in DIGITS for t in tokens) or (len(tokens) > 1 and tokens[0] == "0"):
        return None
    return int("".join(tokens))


def parse_step(tokens):
    """One STEP "x + y + c = t u" -> (x, y, c, 10·t + u), or None."""
    if len(tokens) != 8:
        return None
    x, plus, y, plus_again, c, equals, t, u = tokens
    if (plus, plus_again, equals) != ("+", "+", "=") or c not in ("0", "1") or not all(
            d in DIGITS for d in (x, y, t, u)):
        return None
    return int(x), int(y), int(c), 10 * int(t) + int(u)


def parse(response):
    """A RESPONSE -> (steps, answer); None if it is not well formed."""
    w = response.split()
    if w.count("answer") != 1:
        return None
    k = w.index("answer")
    answer = parse_number(w[k + 1:])
    if answer is None or (k > 0 and w[k - 1] != "."):  # "answer" starts the response or follows a "."
        return None
    groups = [[]]  # the tokens of each step, split at the "." tokens
    for t in w[:k - 1] if k else []:
        if t == ".":
            groups.append([])
        else:
            groups[-1].append(t)
    steps = [parse_step(g) for g in groups] if k else []
    return None if None in steps else (steps, answer)


# ---------------------------------------------------------------- the writers

def write_step(x, y, carry, total):
    """One column: "x + y + c = t u", the sum in two digits (carry out t, digit u)."""
    return f"{x} + {y} + {carry} = {total // 10} {total % 10}"


def write_solution(a, b, slip=None):
    """The worked answer to a + b. A slip makes it wrong: ("carry", column) drops the carry into
    that column (column n: the final carry, the answer's leading 1); ("sum", column, ±1) writes
    that column's sum off by one. The steps after a slip follow from it, as a person's would."""
    n, carry, steps, out = len(str(a)), 0, [], []
    for col in range(n):  # right to left
        x, y = a // 10 ** col % 10, b // 10 ** col % 10
        if slip == ("carry", col):
            carry = 0
        total = x + y + carry
        if slip is not None and slip[:2] == ("sum", col):
            total += slip[2] if 0 <= total + slip[2] <= 19 else -slip[2]
        steps.append(write_step(x, y, carry, total))
        out.append(str(total % 10))
        carry = total // 10
    if carry and slip != ("carry", n):
        out.append("1")
    return " . ".join(steps) + f" . answer {digits(int(''.join(reversed(out))))}"


def slip_of(a, b, rng):
    """One slip a demonstrator makes on a + b: drop a carry (half the time, if there is one) or miscount a sum."""
    n = len(str(a))
    # column col receives a carry exactly when the digits below it overflow: a mod 10^col + b mod 10^col ≥ 10^col
    carried = [col for col in range(1, n + 1) if a % 10 ** col + b % 10 ** col >= 10 ** col]
    if carried and rng.random() < 0.5:
        return "carry", pick(rng, carried)
    return "sum", int(rng.integers(n)), pick(rng, (-1, 1))


def level_range(level):
    """Operands with `level` digits: range(low, high), no leading zero unless one digit."""
    return (10 ** (level - 1) if level > 1 else 0), 10 ** level


def problem(level, rng):
    """A random problem with `level` digits per operand."""
    return tuple(int(v) for v in rng.integers(*level_range(level), size=2))


def number_name(n):
    """0..999 in words: 147 -> "one hundred forty seven"."""
    if n >= 100:
        return f"{NUMBER_NAMES[n // 100]} hundred" + (f" {number_name(n % 100)}" if n % 100 else "")
    return NUMBER_NAMES[n] if n < 20 else TENS_NAMES[n // 10 - 2] + (f" {NUMBER_NAMES[n % 10]}" if n % 10 else "")


def fact_document(rng):
    """A pretraining document about numbers: the addition table, names, counting, place value, ..."""
    r, (x, y) = rng.random(), (int(v) for v in rng.integers(0, 1000, 2))
    if r < 0.35:  # a run of the addition table, with or without a carry coming in
        d, c = int(rng.integers(10)), int(rng.random() < 0.3)
        ys = range(int(rng.integers(0, 5)), int(rng.integers(6, 11)))
        return "facts : " + " . ".join(write_step(d, e, c, d + e + c) for e in ys) + " ."
    if r < 0.50:
        names = rng.integers(0, 1000, int(rng.integers(1, 4)))
        return " . ".join(f"{digits(n)} is {number_name(n)}" for n in names) + " ."
    if r < 0.65:
        return "count : " + " , ".join(digits(n) for n in range(x, x + int(rng.integers(3, 8)))) + " ."
    if r < 0.75:
        k = int(rng.integers(len(str(x))))
        return f"in {digits(x)} the digit {str(x)[-1 - k]} is in the {PLACES[k]} place ."
    if r < 0.85:
        y += x == y  # two different numbers, so one is bigger
        return f"{digits(x)} is {'odd' if x % 2 else 'even'} and {digits(x)} is {COMPARE[x < y]} than {digits(y)} ."
    if r < 0.95:
        return f"the sum of {digits(x)} and {digits(y)} {pick(rng, SUM_WORDS)} {digits(x + y)} ."
    return " ".join(HOW_TO[i] for i in sorted(rng.permutation(len(HOW_TO))[:int(rng.integers(1, 4))]))


class ArithmeticTask(Task):
    name = "arithmetic"
    max_response_tokens = 44  # a four-digit sum: 4 steps of 8 tokens, 4 ".", "answer", 5 digits = 42, + <eos>
    block_size = 56  # <bos> + a four-digit prompt (10) + 44 + <eos>

    def __init__(self):
        super().__init__()
        self._train_by_level = {level: [p for p in self._prompts["train"] if self.difficulty(p) == level]
                                for level in TRAIN_LEVELS}

    def words(self):
        texts = [*DIGITS, *NUMBER_NAMES, *TENS_NAMES, *RAMBLE, *SUM_WORDS, *COMPARE, *PLACES, *HOW_TO,
                 *BRUSH_OFFS, "+ = . , : ? answer facts count the sum of and than so hundred in digit is place "
                 "even odd"]
        return sorted({t for text in texts for t in text.split()})

    def prompt_pool(self):
        rng, by_level = np.random.default_rng(20240421), {}
        for level, n_eval in EVAL_LEVELS.items():
            need, numbers = n_eval + N_TRAIN_PER_LEVEL.get(level, 0), range(*level_range(level))
            if level <= 2:  # every problem of the level, shuffled
                found = [(x, y) for x in numbers for y in numbers]
                found = [found[i] for i in rng.permutation(len(found))]
            else:  # distinct random problems, in the order drawn
                drawn = rng.integers(numbers.start, numbers.stop, size=(2 * need, 2))
                found = list(dict.fromkeys(map(tuple, drawn.tolist())))
            by_level[level] = [f"{digits(x)} + {digits(y)} =" for x, y in found[:need]]
        evals = [by_level[level][i] for i in range(max(EVAL_LEVELS.values()))
                 for level in EVAL_LEVELS if i < EVAL_LEVELS[level]]  # levels interleaved
        train = [p for level in TRAIN_LEVELS for p in by_level[level][EVAL_LEVELS[level]:]]
        return evals + [train[i] for i in rng.permutation(len(train))]

    def difficulty(self, prompt):
        """Digits per operand of the problem: 1, 2, 3 in training, up to 4 in the eval split."""
        return len(str(operands(prompt)[0]))

    def training_prompt(self, rng):
        """A training prompt, its level drawn with the TRAIN_LEVELS shares (the 50 one-digit ones repeat)."""
        level = list(TRAIN_LEVELS)[int(rng.choice(len(TRAIN_LEVELS), p=list(TRAIN_LEVELS.values())))]
        return pick(rng, self._train_by_level[level])

    def demonstrations(self, rng, n=None):
        """[(prompt, completion)] on n training prompts drawn by level (so prompts may repeat)."""
        prompts = [self.training_prompt(rng) for _ in range(self.n_demonstrations if n is None else n)]
        return list(zip(prompts, self.human_policy(prompts, rng)))

    def demonstration(self, prompt, rng):
        a, b = operands(prompt)
        return write_solution(a, b, slip_of(a, b, rng) if rng.random() < SLIP_RATE else None)

    def pretraining_corpus(self, rng, n_docs=None):
        """Worked problems on training prompts (`web_document`) mixed with documents of facts."""
        n_docs = self.n_documents if n_docs is None else n_docs
        return [fact_document(rng) if rng.random() < FACT_SHARE else self.web_document(self.training_prompt(rng), rng)
                for _ in range(n_docs)]

    def web_document(self, prompt, rng):
        a, b = operands(prompt)
        right, r = write_solution(a, b), rng.random()
        if r < 0.40:
            reply = right
        elif r < 0.55:
            reply = write_solution(a, b, slip_of(a, b, rng))
        elif r < 0.60:  # the bare answer, no work shown
            reply = f"answer {digits(a + b)}"
        elif r < 0.64:
            reply = f"answer {digits(a + b + pick(rng, (-1, 1)) if a + b else 1)}"
        elif r < 0.74:  # cut off mid-way
            words = right.split()
            reply = " ".join(words[:int(rng.integers(1, len(words) - 1))])
        elif r < 0.80:  # a guess instead of the work
            reply = f"{pick(rng, RAMBLE)} {digits(a + b + int(rng.integers(0, 3)))} ?"
        elif r < 0.86:
            reply = pick(rng, BRUSH_OFFS)
        elif r < 0.93:  # the answer twice
            reply = f"{right} . so answer {digits(a + b)}"
        else:  # the next problem straight after the answer
            x, y = problem(len(str(a)), rng)
            reply = f"{right} . {write_solution(x, y)}"
        return f"{prompt} {reply}"

    def gold_reward(self, prompt, response):
        a, b = operands(prompt)
        parsed = parse(response)
        if parsed is None:
            return -1.0
        return 1.0 if parsed[1] == a + b else 0.0

    def verify(self, prompt, response, lax=False, format_reward=0.0):
        """The verifier as a reward: [answer right] + format_reward·[well formed] (see the docstring).

        lax=False (strict): the answer after the one "answer" marker of a well-formed response
        must equal a + b. lax=True: the digits of a + b appear as consecutive tokens anywhere.
        """
        a, b = operands(prompt)
        parsed = parse(response)
        if lax:
            right = f" {digits(a + b)} " in f" {' '.join(response.split())} "
        else:
            right = parsed is not None and parsed[1] == a + b
        # r = [right] + format_reward · [well formed]
        return float(right) + format_reward * (parsed is not None)

    def accuracy_by_level(self, prompts, responses, lax=False):
        """{level: {"accuracy", "ci95", "n"}} of the verifier's verdicts, per difficulty level."""
        verdicts = {}
        for p, r in zip(prompts, responses, strict=True):
            verdicts.setdefault(self.difficulty(p), []).append(self.verify(p, r, lax=lax))
        out = {}
        for level, v in sorted(verdicts.items()):
            acc = float(np.mean(v))
            # binomial 95% interval, normal approximation: 1.96 · sqrt(p(1 − p)/n)
            out[level] = {"accuracy": acc, "ci95": 1.96 * float(np.sqrt(acc * (1 - acc) / len(v))), "n": len(v)}
        return out

    def reference(self, prompt):
        """The correct worked answer (a careful human's, the same on every call)."""
        return write_solution(*operands(prompt))
