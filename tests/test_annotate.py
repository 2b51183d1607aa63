"""The labelling tool, driven by scripted input: the exact JSONL it writes (choices, strengths,
invalid keys, tie, skip, undo, quit), left/right mapped back to chosen/rejected, resume without
repeating a pair, nothing lost on Ctrl-C or end of input, 100% agreement for a labeller that
follows gold, the files accepted unchanged (and mixed with simulated labels) by `reward --data`
and `dpo --data`, and the real command on piped stdin."""
import io
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from minirlhf.app.annotate import (AnnotateConfig, candidate_pairs, follow_gold, label_pairs, pair_key, sampled_pairs,
                                   sidecar_path)
from minirlhf.app.cli import main
from minirlhf.lm.data import load_preferences, write_jsonl
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.runs import load_run
from minirlhf.world.annotators import collect_comparisons
from minirlhf.world.tasks import get_task

TASK = get_task("sentiment")
PROMPTS = TASK.prompts("train")[:4]
CANDIDATES = [{"prompt": p, "responses": [f"good {i} .", f"bad {i} ."]} for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A random 1-layer GPT of the sentiment task, saved as an SFT run."""
    from minirlhf.stages.runs import save_run
    path = tmp_path_factory.mktemp("sft")
    model = GPT(GPTConfig(vocab_size=TASK.tokenizer.vocab_size, block_size=TASK.block_size, n_layer=1, n_head=2,
                          n_embd=16), np.random.default_rng(0))
    save_run(path, stage="sft", task="sentiment", model=model, tokenizer=TASK.tokenizer, stage_config={})
    return path


def scripted(answers):
    """input() on a script: each call returns the next answer; after the last, EOFError (as at end of stdin)."""
    answers = iter(answers)

    def ask(question):
        answer = next(answers, None)
        if answer is None:
            raise EOFError
        if isinstance(answer, BaseException):
            raise answer
        return answer
    return ask


def shown_pairs(text):
    """(left, right) of every pair the tool displayed, in order (one-line responses)."""
    lines = text.splitlines()
    return [tuple(side.strip() for side in lines[n + 2].split(" | "))
            for n, line in enumerate(lines) if line.startswith("LEFT ")]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_candidates(path, candidates=CANDIDATES):
    write_jsonl(path, candidates)
    return path


def test_scripted_session_writes_exactly_the_labels_given(tmp_path):
    out, stream = tmp_path / "prefs.jsonl", io.StringIO()
    script = ["l", "9", "2",      # pair 1: left, an invalid strength (re-asked), then 'better'
              "x", "r0",          # pair 2: an invalid key (re-asked), then right negligibly better in one go
              "t",                # pair 3: tie
              "u", "s",           # pair 4: undo the tie -> pair 3 again: skip it
              "r", "b", "?", "q"]  # pair 4 again: right, back, statistics, quit
    label_pairs(AnnotateConfig(pairs=10), out=out, task="sentiment", candidates=write_candidates(tmp_path / "c.jsonl"),
                name="human:test", input_fn=scripted(script), stream=stream)
    shown = shown_pairs(stream.getvalue())
    assert [sorted(pair) for pair in shown] == [sorted(CANDIDATES[i]["responses"]) for i in (0, 1, 2, 3, 2, 3)]
    assert shown[4] == shown[2]   # pairs 1, 2, 3, 4, then 3 again after the undo (same sides), 4 after the skip
    assert rows(out) == [
        {"prompt": PROMPTS[0], "chosen": shown[0][0], "rejected": shown[0][1], "margin": 2, "annotator": "human:test"},
        {"prompt": PROMPTS[1], "chosen": shown[1][1], "rejected": shown[1][0], "margin": 0, "annotator": "human:test"}]
    assert rows(sidecar_path(out)) == [
        {"prompt": PROMPTS[2], "responses": list(shown[4]), "decision": "skip", "annotator": "human:test"}]
    text = stream.getvalue()
    assert "'9' is not a key; valid keys: 3 2 1 0 b" in text
    assert "'x' is not a key; valid keys: l r (l3 l2 l1 l0 r3 ...) t s u ? q" in text
    assert "undone: the last decision is removed from prefs.ties_skips.jsonl" in text
    assert "-- your labels: 2 (and 0 ties)" in text
    assert "quit: the same command again continues from here\nlabels saved this session: 2" in text
    assert max(len(line) for line in text.splitlines() if str(tmp_path) not in line) <= 80   # fits a terminal


def test_undo_takes_written_labels_back_out_of_the_file(tmp_path):
    out, stream, files = tmp_path / "prefs.jsonl", io.StringIO(), []
    script = ["l3",          # pair 1: left, significantly better
              "u",           # pair 2: undo -> pair 1's label leaves the file, pair 1 again
              "r1", "l2",    # pair 1: right, slightly; pair 2: left, better
              "u", "u",      # pair 3: undo pair 2's label; pair 2: undo pair 1's label too (two back)
              "l0", "r3",    # pair 1: left, negligibly; pair 2: right, significantly
              "q"]           # pair 3: quit
    answer = scripted(script)

    def ask(question):   # the file as it is on disk each time a pair waits for its decision
        if question.startswith("["):
            files.append(out.read_text() if out.is_file() else "")
        return answer(question)
    label_pairs(AnnotateConfig(pairs=10), out=out, task="sentiment", candidates=write_candidates(tmp_path / "c.jsonl"),
                name="human:test", input_fn=ask, stream=stream)
    shown = shown_pairs(stream.getvalue())
    assert [sorted(pair) for pair in shown] == [sorted(CANDIDATES[i]["responses"]) for i in (0, 1, 0, 1, 2, 1, 0, 1, 2)]
    assert shown[2] == shown[6] == shown[0] and shown[5] == shown[7] == shown[1]   # shown again on the same sides

    def line(i, chosen, margin):   # the JSONL line of pair i labelled with side `chosen` (0 left, 1 right)
        return json.dumps({"prompt": PROMPTS[i], "chosen": shown[i][chosen], "rejected": shown[i][1 - chosen],
                           "margin": margin, "annotator": "human:test"}) + "\n"
    assert files == ["", line(0, 0, 3), "", line(0, 1, 1), line(0, 1, 1) + line(1, 0, 2), line(0, 1, 1), "",
                     line(0, 0, 0), line(0, 0, 0) + line(1, 1, 3)]
    assert out.read_text() == line(0, 0, 0) + line(1, 1, 3)
    assert not sidecar_path(out).is_file() or sidecar_path(out).read_text() == ""   # no tie or skip was given
    assert stream.getvalue().count("undone: the last decision is removed from prefs.jsonl") == 3
    assert "labels saved this session: 2" in stream.getvalue()


def test_left_right_order_is_random_and_maps_back_to_chosen_and_rejected(tmp_path):
    candidates = [{"prompt": p, "responses": [f"first {i} .", f"second {i} ."]}
                  for i, p in enumerate(TASK.prompts("train")[:16])]
    out, stream = tmp_path / "prefs.jsonl", io.StringIO()
    label_pairs(AnnotateConfig(pairs=16), out=out, task="sentiment",
                candidates=write_candidates(tmp_path / "c", candidates), input_fn=scripted(["l3"] * 16), stream=stream)
    labels, shown = rows(out), shown_pairs(stream.getvalue())
    assert [(r["chosen"], r["rejected"]) for r in labels] == shown   # always the LEFT one, as displayed
    firsts_left = sum(r["chosen"].startswith("first") for r in labels)
    assert 0 < firsts_left < 16   # both orders occur (fixed seed: the test is deterministic)


def test_resume_appends_and_never_repeats_a_pair(sft_dir, tmp_path):
    out, config = tmp_path / "prefs.jsonl", AnnotateConfig(pairs=4, seed=3)
    streams = [io.StringIO() for _ in range(3)]
    label_pairs(config, out=out, init=sft_dir, input_fn=scripted(["l1"]), stream=streams[0])            # then EOF
    label_pairs(config, out=out, init=sft_dir, input_fn=scripted(["t", "r2", "s"]), stream=streams[1])   # then EOF
    label_pairs(config, out=out, init=sft_dir, input_fn=scripted([]), stream=streams[2])
    seen = [[pair_key("", *pair) for pair in shown_pairs(s.getvalue())] for s in streams]
    assert [len(s) for s in seen] == [2, 3, 0]   # session 1 saw pairs 1 and 2 (EOF on 2); session 3 nothing
    assert seen[1][0] == seen[0][1] and not set(seen[1]) & {seen[0][0]}
    assert "end of input: the same command again continues from here\nlabels saved this session: 1" in \
        streams[0].getvalue()
    assert "done: every pair of this job is decided" in streams[2].getvalue()
    assert [r["margin"] for r in rows(out)] == [1, 2]
    assert [r["decision"] for r in rows(sidecar_path(out))] == ["tie", "skip"]
    # the sequence is a function of the seed: pair i does not depend on how many are asked for
    model, tokenizer, _ = load_run(sft_dir)
    policy = ModelPolicy(model, tokenizer, TASK.max_response_tokens)
    job = list(islice(sampled_pairs(TASK, policy, seed=3), 4))
    assert job[:2] == list(islice(sampled_pairs(TASK, policy, seed=3), 2))
    decided = {pair_key(r["prompt"], r["chosen"], r["rejected"]) for r in rows(out)}
    decided |= {pair_key(r["prompt"], *r["responses"]) for r in rows(sidecar_path(out))}
    assert decided == {pair_key(*pair) for pair in job}


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), EOFError()])
def test_ctrl_c_and_end_of_input_lose_nothing(tmp_path, stop):
    out, stream = tmp_path / "prefs.jsonl", io.StringIO()
    stats = label_pairs(AnnotateConfig(), out=out, task="sentiment", candidates=write_candidates(tmp_path / "c.jsonl"),
                        input_fn=scripted(["l3", "t", "r", stop]), stream=stream)
    assert [r["margin"] for r in rows(out)] == [3] and len(rows(sidecar_path(out))) == 1
    assert stats["labels"] == 1 and stats["ties"] == 1
    word = "interrupted" if isinstance(stop, KeyboardInterrupt) else "end of input"
    assert f"{word}: the same command again continues from here\nlabels saved this session: 1" in stream.getvalue()


def gold_candidates(path, n=12):
    """Human-written answers of different quality: two per training prompt."""
    rng = np.random.default_rng(0)
    prompts = TASK.prompts("train")[100:100 + n]
    pairs = zip(TASK.human_policy(prompts, rng), TASK.human_policy(prompts, rng))
    return write_candidates(path, [{"prompt": p, "responses": list(pair)} for p, pair in zip(prompts, pairs)])


def test_a_labeller_that_follows_gold_agrees_with_gold_every_time(tmp_path):
    out, stream = tmp_path / "prefs.jsonl", io.StringIO()
    candidates = gold_candidates(tmp_path / "c.jsonl")
    clock = iter(np.arange(100.0) * 2.5).__next__   # every call 2.5 s later: 2.5 s per decision
    stats = label_pairs(AnnotateConfig(pairs=12), out=out, task="sentiment", candidates=candidates, name="gold",
                        labeller=follow_gold(TASK), stream=stream, clock=clock)
    assert stats["labels"] >= 8 and stats["agreement_gold"] == 1.0
    assert all(r["margin"] in (0, 1, 2, 3) for r in rows(out))
    assert all(TASK.gold_reward(r["prompt"], r["chosen"]) > TASK.gold_reward(r["prompt"], r["rejected"])
               for r in rows(out))
    assert stats["annotators_gold"]["careful"] >= stats["annotators_gold"]["hasty"]
    assert stats["seconds_mean"] == stats["seconds_median"] == 2.5
    assert "agreement with the gold judgement: 100%" in stream.getvalue()


def test_reward_and_dpo_read_the_labels_unchanged_and_mixed_with_simulated_ones(sft_dir, tmp_path):
    human = tmp_path / "human.jsonl"
    label_pairs(AnnotateConfig(pairs=12), out=human, task="sentiment", candidates=gold_candidates(tmp_path / "c.jsonl"),
                name="human:test", labeller=follow_gold(TASK), stream=io.StringIO())
    simulated = collect_comparisons(TASK, TASK.human_policy, TASK.prompts("train")[200:210],
                                    rng=np.random.default_rng(1), kind="graded")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(human.read_text() + "".join(json.dumps(r) + "\n" for r in simulated))
    assert {r["annotator"] for r in load_preferences(mixed)} > {"human:test"}
    assert main(["reward", "--init", str(sft_dir), "--data", str(mixed), "--out", str(tmp_path / "rm"), "--steps", "2",
                 "--batch-size", "4", "--margin", "0.5", "--normalize-samples", "4", "--quiet"]) == 0
    names = {r["annotator"] for r in load_preferences(tmp_path / "rm" / "comparisons.jsonl")}
    assert "human:test" in names and names - {"human:test"}   # each row kept its annotator
    assert main(["dpo", "--init", str(sft_dir), "--data", str(human), "--out", str(tmp_path / "dpo"), "--steps", "1",
                 "--batch-size", "4", "--eval-prompts", "2", "--quiet"]) == 0


def test_the_command_on_piped_stdin(sft_dir, tmp_path):
    env = {**os.environ, "LOGNAME": "ada", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "minirlhf", "annotate", "--init", str(sft_dir), "--pairs", "3"],
                          input="l2\nzz\nq\n", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pair 1 of 3" in done.stdout and "saved: LEFT is better (margin 2)" in done.stdout
    assert "'zz' is not a key" in done.stdout and "labels saved this session: 1; yours in prefs.jsonl: 1" in done.stdout
    [row] = rows(tmp_path / "prefs.jsonl")
    assert row["margin"] == 2 and row["annotator"] == "human:ada"
    bad = subprocess.run([sys.executable, "-m", "minirlhf", "annotate", "--from", "c.jsonl"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, input="", timeout=60)
    assert bad.returncode == 2 and "give --task" in bad.stderr


def test_candidates_file_is_validated(tmp_path):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [{"prompt": "p", "responses": ["a", "b", "c"]}, {"prompt": "q", "responses": ["x", "x"]}])
    assert candidate_pairs(path) == [("p", "a", "b"), ("p", "a", "c"), ("p", "b", "c")]   # x = x is no pair
    write_jsonl(path, [{"prompt": "p", "responses": ["a"]}])
    with pytest.raises(ValueError, match="line 1: field 'responses' must be a list of at least 2"):
        candidate_pairs(path)
