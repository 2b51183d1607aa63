"""The arithmetic task (issue 21): its format, the strict and the lax verifier on correct, wrong,
malformed and adversarial responses, the demonstrators' error rate, difficulty levels, and
pass@k against brute force over all subsets."""

import itertools
import math

import numpy as np
import pytest

from minirlhf.lm.data import encode_pair
from minirlhf.world.metrics import pass_at_k
from minirlhf.world.tasks import get_task
from minirlhf.world.tasks.arithmetic import (DEMO_ACCURACY, EVAL_LEVELS, TRAIN_LEVELS, digits, level_range, operands,
                                             parse)

TASK = get_task("arithmetic")
PROMPT = "4 7 + 3 8 ="
RIGHT = "7 + 8 + 0 = 1 5 . 4 + 3 + 1 = 0 8 . answer 8 5"


def lax_oracle(prompt, response):
    """The lax verifier's documented rule, written independently: the digits of a + b appear
    as consecutive whitespace-separated tokens somewhere in the response."""
    want, tokens = list(str(sum(operands(prompt)))), response.split()
    return any(tokens[i:i + len(want)] == want for i in range(len(tokens)))


def test_the_worked_format():
    assert operands(PROMPT) == (47, 38) and TASK.difficulty(PROMPT) == 2
    assert TASK.reference(PROMPT) == RIGHT
    assert parse(RIGHT) == ([(7, 8, 0, 15), (4, 3, 1, 8)], 85)  # (digit, digit, carry in, column sum)
    assert TASK.reference("5 + 2 =") == "5 + 2 + 0 = 0 7 . answer 7"
    # the final carry becomes the answer's leading 1
    assert TASK.reference("9 9 + 9 9 =") == "9 + 9 + 0 = 1 8 . 9 + 9 + 1 = 1 9 . answer 1 9 8"
    for bad in ("4 7 + 3 =", "0 7 + 3 8 =", "4 7 + 3 8", "what is 4 7 + 3 8 ?", "4 7 - 3 8 ="):
        with pytest.raises(ValueError, match="arithmetic: a prompt is 'A \\+ B ='"):
            operands(bad)


def test_references_are_correct_and_well_formed_on_every_prompt():
    prompts = TASK.prompts("eval") + TASK.prompts("train")[:2000]
    for p in prompts:
        ref, (a, b) = TASK.reference(p), operands(p)
        steps, answer = parse(ref)
        assert answer == a + b and TASK.verify(p, ref) == 1.0 and TASK.gold_reward(p, ref) == 1.0
        # every step adds the right column, with the right carry coming in
        carry = 0
        for col, (x, y, c, total) in enumerate(steps):
            assert (x, y, c) == (a // 10 ** col % 10, b // 10 ** col % 10, carry) and total == x + y + c
            carry = total // 10


def test_strict_verifier_on_correct_wrong_and_malformed_responses():
    verify, gold = (lambda r, **kw: TASK.verify(PROMPT, r, **kw)), (lambda r: TASK.gold_reward(PROMPT, r))
    for right in (RIGHT, "answer 8 5", "  7 + 8 + 0 = 1 5 .\n4 + 3 + 1 = 0 8 .   answer 8  5 ",  # any whitespace
                  "9 + 9 + 0 = 1 8 . answer 8 5"):  # a wrong step, the right answer: the answer is graded
        assert verify(right) == 1.0 and gold(right) == 1.0, right
    for wrong in ("7 + 8 + 0 = 1 5 . 4 + 3 + 0 = 0 7 . answer 7 5", "answer 8 4", "answer 0", "answer 1 8 5"):
        assert verify(wrong) == 0.0 and gold(wrong) == 0.0, wrong
    malformed = ["", "   ", "8 5", "answer", "the answer is 8 5", "answer 0 8 5",  # leading zero
                 "answer 85",  # not digit tokens (and not in the vocabulary)
                 "answer 8 5 .", "7 + 8 + 0 = 1 5 answer 8 5", ". answer 8 5", "7 + 8 + 0 = 1 5 . . answer 8 5",
                 "7 + 8 = 1 5 . answer 8 5",      # a step without its carry
                 "7 + 8 + 0 = 5 . answer 8 5",    # a sum without its carry digit
                 "7 + 8 + 2 = 1 7 . answer 8 5",  # a carry of 2
                 "7 + + 0 = 1 5 . answer 8 5", "7 + 8 + 0 = 1 5 . 4 + 3 + 1 = 0 8 ."]
    for bad in malformed:
        assert verify(bad) == 0.0 and gold(bad) == -1.0, bad
    # the format reward is off by default and, when on, paid for any well-formed response
    assert verify(RIGHT, format_reward=0.1) == pytest.approx(1.1)
    assert verify("answer 8 4", format_reward=0.1) == pytest.approx(0.1)
    assert all(verify(bad, format_reward=0.1) == 0.0 for bad in malformed)


@pytest.mark.parametrize("response", [
    "answer 8 5 8 6",                      # extra digits: the number is 8586
    "answer 8 5 answer 8 6",               # two answers
    "answer 8 4 . answer 8 5",
    RIGHT + " . 9 + 9 + 0 = 1 8 . answer 1 8",  # the next problem after it
    "8 5 . answer 8 4",                    # the right number, but not as the answer
    "answer 8 , 5", "answer 8 . 5", "answer 8 + 5",  # the answer split by other tokens
])
def test_adversarial_responses_fail_the_strict_verifier(response):
    assert TASK.verify(PROMPT, response) == 0.0


@pytest.mark.parametrize("response, strict, lax", [  # the table in docs/verifiable_rewards.md
    (RIGHT, 1.0, 1.0), ("answer 8 4 8 5 8 6", 0.0, 1.0), ("answer 1 8 5", 0.0, 1.0), ("8 5 . answer 8 4", 0.0, 1.0),
    ("who cares 8 5 lol", 0.0, 1.0), ("answer 8 , 5", 0.0, 0.0)])
def test_the_documented_verdicts(response, strict, lax):
    assert (TASK.verify(PROMPT, response), TASK.verify(PROMPT, response, lax=True)) == (strict, lax)


def test_lax_verifier_is_gamed_exactly_as_documented_and_the_strict_one_is_not():
    prompts = TASK.prompts("eval")[:200]
    for p in prompts:
        a, b = operands(p)
        work = TASK.reference(p).split(" answer ")[0]
        hedged = f"{work} answer {digits(a + b + 1)} {digits(a + b)} {digits(a + b + 2)}"  # three guesses
        before_marker = f"{digits(a + b)} . answer {digits(a + b + 1)}"                  # right, then wrong
        inside_garbage = f"who cares {digits(a + b)} lol"
        for game in (hedged, before_marker, inside_garbage):
            assert TASK.verify(p, game, lax=True) == 1.0 and TASK.verify(p, game) == 0.0, game
        assert TASK.verify(p, TASK.reference(p), lax=True) == 1.0
    # one hedged response passes the lax verifier on every problem whose sum is any run of its digits
    # (8, 84, 848, 4, 48, ...); the strict verifier reads one number and accepts one sum at most
    problems = [f"{digits(x)} + {digits(y)} =" for n in (1, 2) for x in range(*level_range(n))
                for y in range(*level_range(n))]
    for response, lax_sums, strict_sums in [("answer 8 4 8 5 8 6", {4, 5, 6, 8, 48, 58, 84, 85, 86}, set()),
                                            ("answer 8 5", {5, 8, 85}, {85})]:
        assert {sum(operands(p)) for p in problems if TASK.verify(p, response, lax=True)} == lax_sums
        assert {sum(operands(p)) for p in problems if TASK.verify(p, response)} == strict_sums
    # on random token soup, lax is exactly the documented rule, and never stricter than strict
    rng = np.random.default_rng(0)
    soup = [str(d) for d in range(10)] + ["+", "=", ".", "answer", ","]
    for _ in range(3000):
        p = prompts[int(rng.integers(len(prompts)))]
        r = " ".join(soup[i] for i in rng.integers(len(soup), size=int(rng.integers(0, 12))))
        if rng.random() < 0.3:
            r += f" answer {digits(sum(operands(p)))}"
        lax, strict = TASK.verify(p, r, lax=True), TASK.verify(p, r)
        assert lax == float(lax_oracle(p, r)) and lax >= strict, (p, r)
        assert strict == float(TASK.gold_reward(p, r) == 1.0)  # strict verifier = gold correctness


@pytest.mark.parametrize("split", ["train", "eval"])
def test_demonstrators_are_right_as_often_as_the_task_says(split):
    """On 1,000 fresh demonstrations per split (and per level), the accuracy is DEMO_ACCURACY
    within 4 standard errors of a binomial proportion, and inside the issue's 60–80%."""
    rng, n = np.random.default_rng(1), 1000
    pool = TASK.prompts(split)
    tolerance = 4 * math.sqrt(DEMO_ACCURACY * (1 - DEMO_ACCURACY) / n)  # ≈ 0.058
    by_level = {level: [p for p in pool if TASK.difficulty(p) == level] for level in sorted(EVAL_LEVELS)}
    samples = {"all": [pool[i] for i in rng.integers(len(pool), size=n)]}
    samples.update({level: [ps[i] for i in rng.integers(len(ps), size=n)] for level, ps in by_level.items() if ps})
    for name, prompts in samples.items():
        demos = TASK.human_policy(prompts, rng)
        right = np.array([TASK.verify(p, r) for p, r in zip(prompts, demos)])
        assert abs(right.mean() - DEMO_ACCURACY) < tolerance and 0.6 <= right.mean() <= 0.8, (name, right.mean())
        assert all(TASK.gold_reward(p, r) > -1 for p, r in zip(prompts, demos))  # slips, never garbage
        # a right demonstration is the careful one; a wrong one left the reference at a step (or its answer)
        assert all((r == TASK.reference(p)) == bool(v) for p, r, v in zip(prompts, demos, right))


def slips(prompt, response):
    """The documented slips found in a worked answer: ['carry'] for a dropped carry (into a column
    or the answer's leading 1), ['sum'] for a column added wrong by one, [] for none."""
    (a, b), (steps, answer) = operands(prompt), parse(response)
    found, carry = [], 0
    for col, (x, y, c, total) in enumerate(steps):
        assert (x, y) == (a // 10 ** col % 10, b // 10 ** col % 10)  # digits are never miscopied
        found += ["carry"] * (c < carry) + ["sum"] * (abs(total - (x + y + c)) == 1)
        assert c <= carry and abs(total - (x + y + c)) <= 1, response
        carry = total // 10
    written = "".join(str(t % 10) for *_, t in reversed(steps))
    assert answer in (int(str(carry) + written), int(written)), response  # the answer reads the steps
    return found + ["carry"] * (answer != int(str(carry) + written))


def test_demonstrators_slip_only_in_the_documented_ways():
    rng = np.random.default_rng(2)
    kinds = []
    for p, r in TASK.demonstrations(rng, 1000):
        found = slips(p, r)
        assert len(found) == (TASK.verify(p, r) == 0.0), (p, r)  # a wrong answer has exactly one slip
        kinds += found
    assert kinds.count("carry") > 50 and kinds.count("sum") > 100, (kinds.count("carry"), kinds.count("sum"))


def test_levels_splits_and_the_held_out_harder_problems():
    evals, train = TASK.prompts("eval"), TASK.prompts("train")
    assert [sum(TASK.difficulty(p) == level for p in evals) for level in EVAL_LEVELS] == list(EVAL_LEVELS.values())
    assert {TASK.difficulty(p) for p in train} == set(TRAIN_LEVELS) and max(EVAL_LEVELS) > max(TRAIN_LEVELS)
    assert [TASK.difficulty(p) for p in evals[:200]].count(4) == 50  # any prefix mixes the levels
    # four-digit problems appear nowhere in training: not in demonstrations, not in the corpus
    rng = np.random.default_rng(0)
    assert max(TASK.difficulty(p) for p, _ in TASK.demonstrations(rng)) == max(TRAIN_LEVELS)
    for doc in TASK.pretraining_corpus(rng):  # no "+" follows more than three digits
        tokens = doc.split()
        for i in (i for i, t in enumerate(tokens) if t == "+"):
            assert i < 4 or not all(t.isdigit() for t in tokens[i - 4:i]), doc
    # accuracy by level: references score 1 at every level, with the counts
    accuracy = TASK.accuracy_by_level(evals, [TASK.reference(p) for p in evals])
    assert {level: (v["accuracy"], v["n"]) for level, v in accuracy.items()} == {
        level: (1.0, n) for level, n in EVAL_LEVELS.items()}
    wrong = TASK.accuracy_by_level(evals[:4], ["answer 1"] * 4)
    assert {level: v["accuracy"] for level, v in wrong.items()} == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}


def test_text_round_trips_and_fits_the_block_size():
    tok, rng = TASK.tokenizer, np.random.default_rng(0)
    evals, train = TASK.prompts("eval"), TASK.prompts("train")
    texts = (evals + train + [TASK.reference(p) for p in evals] + [r for _, r in TASK.demonstrations(rng, 500)]
             + TASK.pretraining_corpus(rng, 500))
    for text in texts:
        assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text, text
    # the longest possible problem (four digits, a carry in every column) and its answer + <eos> fit
    worst = "9 9 9 9 + 9 9 9 9 ="
    ids, _ = encode_pair(tok, worst, TASK.reference(worst))
    assert len(tok.encode(TASK.reference(worst))) + 1 <= TASK.max_response_tokens and len(ids) <= TASK.block_size
    assert max(len(encode_pair(tok, p, TASK.reference(p))[0]) for p in evals) <= TASK.block_size


# ---------------------------------------------------------------- pass@k

def brute_force_pass_at_k(n, c, k):
    """The fraction of all k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0                   # c = 0, c = n
    assert pass_at_k(10, 3, 10) == 1.0 and pass_at_k(10, 0, 10) == 0.0                  # k = n
    assert pass_at_k(10, 3, 8) == 1.0  # only 7 wrong samples: any 8 hold a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    # C(1000, 500) ≈ 2.7e299 is at float64's edge and C(2000, 1000) far past it; the product form
    # never leaves [0, 1] (exact values from Python's integer binomials, divided exactly)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    for n, c, k in [(1000, 10, 500), (1000, 3, 997), (2000, 10, 1000)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)
    big = [pass_at_k(1000, c, 500) for c in (0, 1, 2, 100, 500, 501, 1000)]
    assert big[0] == 0.0 and big[-2:] == [1.0, 1.0] and all(np.diff(big) >= 0) and all(np.isfinite(big))
    assert isinstance(pass_at_k(np.int64(5), np.int64(2), np.int64(2)), float)


@pytest.mark.parametrize("n, c, k, name", [(5, 6, 1, "c"), (5, -1, 1, "c"), (5, 2, 0, "k"), (5, 2, 6, "k"),
                                           (0, 0, 1, "n"), (5.0, 2, 1, "n"), (5, 2, 1.5, "k"), (5, True, 1, "c")])
def test_pass_at_k_rejects_bad_arguments_by_name(n, c, k, name):
    with pytest.raises(ValueError, match=f"pass_at_k: {name} must"):
        pass_at_k(n, c, k)
