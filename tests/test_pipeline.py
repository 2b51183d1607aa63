"""The main job: stages in order, finished stages skipped on a re-run, every stage's config reachable
from the command line, and a report that covers every policy."""
import json
import subprocess
import sys
import textwrap
import time

import pytest

from minirlhf.app import pipeline
from minirlhf.app.cli import main
from minirlhf.app.pipeline import file_lock, make_config, quick_run, run
from minirlhf.stages.runs import read_json

import claims
from claims import assert_holds

TINY = {"pretrain": {"steps": 4, "n_layer": 1, "n_embd": 16, "n_head": 2, "n_documents": 200, "eval_every": 2,
                     "warmup_steps": 1},
        "sft": {"steps": 3, "batch_size": 4, "n_demonstrations": 40, "eval_every": 3, "eval_prompts": 4}}


def test_a_rerun_skips_finished_stages_and_resumes_the_rest(tmp_path):
    config = make_config("sentiment", overrides=TINY)
    dirs = run(config, out=tmp_path, quiet=True, until="sft")
    weights = (dirs["sft"] / "model.npz").stat().st_mtime_ns
    assert set(read_json(tmp_path / "timings.json")) == {"pretrain", "sft"}
    run(config, out=tmp_path, quiet=True, until="sft")
    assert (dirs["sft"] / "model.npz").stat().st_mtime_ns == weights   # not retrained


def test_stage_flags_and_config_file_reach_the_stage_configs(tmp_path, monkeypatch):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"ppo": {"steps": 11, "kl_coef": 0.3}, "pipeline": {"best_of_n": 4}}))
    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda config, out, quiet: seen.setdefault("config", config) and {"out": out})
    assert main(["pipeline", "--quick", "--config", str(settings), "--ppo.steps", "7", "--dpo.beta", "0.2",
                 "--out", str(tmp_path / "p")]) == 0
    config = seen["config"]
    assert config.ppo.steps == 7 and config.ppo.kl_coef == 0.3          # the flag beats the file
    assert config.dpo.beta == 0.2 and config.best_of_n == 4
    assert config.pretrain.steps == pipeline.QUICK["pretrain"]["steps"]  # --quick settings underneath


@pytest.mark.parametrize("argv, message", [
    (["pipeline", "--task", "poetry"], "unknown task 'poetry'"),
    (["pipeline", "--ppo.steps", "0"], "PPOConfig.steps"),
    (["pipeline", "--pipeline.eval-prompts", "100000"], "PipelineConfig.eval_prompts"),
])
def test_bad_pipeline_arguments_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("must not run"))
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_report_covers_every_policy_and_stage():
    out = quick_run("sentiment", "report")
    results = read_json(out / "results.json")
    policies = results["policies"]
    assert set(policies) == {"human demonstrations", "pretrained", "SFT", "PPO", "DPO", "best-of-8"}
    for name, row in policies.items():
        for key in ("gold_reward", "gold_reward_ci95", "win_rate", "rm_score", "distinct_2", "rouge_l"):
            assert key in row, (name, key)
    # the RL policies were optimised against the RM: they must score above SFT on it
    assert_holds(claims.report_ranks_the_policies())
    curve = results["best_of_n_curve"]
    assert [p["rm_score"] for p in curve] == sorted(p["rm_score"] for p in curve)   # proxy rises with n
    report = (out / "report.md").read_text()
    for name in policies:
        assert f"| {name} |" in report
    for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "evaluation"):
        assert f"| {stage} |" in report                                  # per-stage times
    for image in ("frontier.png", "policies.png", "ppo/curves.png"):
        assert (out / image).is_file() and f"]({image})" in report


def test_file_lock_makes_a_second_process_wait(tmp_path):
    # two pytest-xdist workers may ask for the same cached quick run at once: the second waits for the first
    lock, log = tmp_path / ".lock", tmp_path / "log.txt"
    holder = textwrap.dedent(f"""
        import time
        from minirlhf.app.pipeline import file_lock
        with file_lock({str(lock)!r}):
            open({str(log)!r}, "a").write("first in\\n")
            time.sleep(1.5)
            open({str(log)!r}, "a").write("first out\\n")
    """)
    first = subprocess.Popen([sys.executable, "-c", holder])
    while not log.exists():                              # until the other process holds the lock
        assert first.poll() is None, "the first process ended without taking the lock"
        time.sleep(0.05)
    with file_lock(lock):
        log.open("a").write("second in\n")
    assert first.wait(timeout=600) == 0
    assert log.read_text().splitlines() == ["first in", "first out", "second in"]
