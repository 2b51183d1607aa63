"""The main job: the whole RLHF recipe on a built-in toy task, one stage after another.

    pretrain → SFT → comparisons by simulated annotators → reward model → DPO, PPO
            → report: every policy (and best-of-n from SFT) judged on held-out prompts

Each stage writes its own run directory `<out>/<stage>`; a stage whose directory is complete
(has its summary.json) is skipped, and one with a checkpoint resumes from it, so re-running an
interrupted pipeline continues where it stopped. The last step writes `report.md`,
`results.json` and plots into `<out>` (`minirlhf.app.report`); `timings.json` keeps each stage's wall
time. `run(config)` is the Python entry point; `minirlhf pipeline` the command line.

`quick_run(task, stage)` is the shared cache of tiny trained runs that tests and notebooks use:
it runs the `quick` pipeline once per machine (per task, seed and version of the code) up to the
requested stage and returns that stage's run directory; `quick_extra` caches other runs beside it.
"""
import contextlib
import dataclasses
import hashlib
import os
import time
from pathlib import Path

from minirlhf.app.report import write_report
from minirlhf.engine.kernels import tune_allocator
from minirlhf.stages.config import check_range, option
from minirlhf.stages.dpo import DPOConfig, train_dpo
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.pretrain import PretrainConfig, train_pretrain
from minirlhf.stages.reward import RewardConfig, train_reward_model
from minirlhf.stages.runs import is_complete, new_run_dir, read_json, write_json
from minirlhf.stages.sft import SFTConfig, train_sft
from minirlhf.world.tasks import get_task

STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "report")
STAGE_CONFIGS = {"pretrain": PretrainConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig,
                 "ppo": PPOConfig}


@dataclasses.dataclass
class PipelineConfig:
    task: str = option("sentiment", "built-in toy task (sentiment or summarize)")
    seed: int = option(0, "seeds every stage")
    quick: bool = option(False, "small settings for tests and a first look (≤ 90 s)")
    eval_prompts: int = option(500, "held-out prompts every policy answers in the report (≥ 1)")
    best_of_n: int = option(16, "n of the best-of-n policy in the report's table (≥ 1)")
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)

    def __post_init__(self):
        get_task(self.task)  # an unknown task name stops here, with the list of known ones
        check_range(self, "seed", 0, None)
        check_range(self, "eval_prompts", 1, len(get_task(self.task).prompts("eval")))
        check_range(self, "best_of_n", 1, 256)


# Settings of the --quick pipeline: the same recipe, a fraction of the steps.
QUICK = {
    "pretrain": {"steps": 300, "eval_every": 100, "sample_every": 0, "n_documents": 2000},
    "sft": {"steps": 100, "eval_every": 50, "eval_prompts": 100},
    "reward": {"comparisons": 400, "heldout_comparisons": 200, "steps": 60, "eval_every": 20,
               "normalize_samples": 200},
    "dpo": {"steps": 60, "eval_every": 20, "beta": 0.5, "lr": 3e-4},
    "ppo": {"steps": 25, "lr": 1e-3, "checkpoint_every": 25},
    "pipeline": {"eval_prompts": 100, "best_of_n": 8},
}


def make_config(task="sentiment", seed=0, quick=False, overrides=None):
    """A PipelineConfig from the defaults, the quick settings if asked, then `overrides`.

    overrides: {stage: {field: value}}, e.g. {"ppo": {"steps": 200}}, and {"pipeline": {...}} for
    the report's own fields. Every stage gets the seed and the pretraining stage the task.
    """
    stage_configs = {}
    for stage, config_class in STAGE_CONFIGS.items():
        values = {"seed": seed, **(QUICK[stage] if quick else {}), **(overrides or {}).get(stage, {})}
        if stage == "pretrain":
            values["task"] = task
        stage_configs[stage] = config_class(**values)
    report = {**(QUICK["pipeline"] if quick else {}), **(overrides or {}).get("pipeline", {})}
    return PipelineConfig(task=task, seed=seed, quick=quick, **report, **stage_configs)


def run(config, out=None, quiet=False, until=None):
    """Run the pipeline (up to and including stage `until`); returns {stage: run_dir, 'out': dir}."""
    out = new_run_dir("pipeline", out)
    write_json(out / "pipeline_config.json", dataclasses.asdict(config))
    dirs = {"out": out}
    seconds = read_json(out / "timings.json") if (out / "timings.json").is_file() else {}

    def stage(name, train):
        run_dir = out / name
        if not is_complete(run_dir):
            resume = (run_dir / "checkpoint" / "state.npz").is_file()
            if not quiet:
                print(f"== {name}" + (" (resuming)" if resume else ""), flush=True)
            started = time.time()
            train(run_dir, resume)
            seconds[name] = time.time() - started
            write_json(out / "timings.json", seconds)
        dirs[name] = run_dir
        return until == name

    if stage("pretrain", lambda d, r: train_pretrain(config.pretrain, out=d, resume=r, quiet=quiet)):
        return dirs
    if stage("sft", lambda d, r: train_sft(config.sft, init=dirs["pretrain"], out=d, resume=r, quiet=quiet)):
        return dirs
    if stage("reward", lambda d, r: train_reward_model(config.reward, init=dirs["sft"], out=d, resume=r, quiet=quiet)):
        return dirs
    # DPO learns from exactly the comparisons the reward model was trained and evaluated on
    if stage("dpo", lambda d, r: train_dpo(config.dpo, init=dirs["sft"], out=d, data=dirs["reward"] / "comparisons.jsonl",
                                     heldout_data=dirs["reward"] / "heldout_comparisons.jsonl", resume=r, quiet=quiet)):
        return dirs
    if stage("ppo", lambda d, r: train_ppo(config.ppo, init=dirs["sft"], reward=dirs["reward"], out=d, resume=r,
                                     quiet=quiet)):
        return dirs
    if not (out / "results.json").is_file():
        if not quiet:
            print("== report: every policy on held-out prompts", flush=True)
        write_report(out, {k: v for k, v in dirs.items() if k != "out"}, config.task, seconds=seconds,
                     n_prompts=config.eval_prompts, best_of=config.best_of_n, seed=config.seed)
    dirs["report"] = out
    if not quiet:
        print("\n".join(f"{name:>10}: {s:6.0f} s" for name, s in read_json(out / "results.json")["seconds"].items()))
        print(f"report: {out / 'report.md'}")
    return dirs


# ----------------------------------------------------------------------------- the cache of quick runs

def quick_run(task="sentiment", stage="sft", seed=0):
    """Run directory of `stage` from the cached quick pipeline of `task` (trained on first use).

    The cache lives in $MINIRLHF_CACHE (default ~/.cache/minirlhf), one folder per task, seed and
    hash of the package's source, so editing the code retrains instead of reusing stale runs.
    A file lock (`file_lock`) lets parallel test workers share it: a run that another process is training is
    waited for, never trained twice. Old folders are never deleted while a
    process might be reading them; the whole cache can be removed at any time.
    """
    if stage not in STAGES:
        raise ValueError(f"quick_run: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    tune_allocator()
    root = Path(os.environ.get("MINIRLHF_CACHE", Path.home() / ".cache" / "minirlhf"))
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"quick-{task}-seed{seed}-{source_hash()}"
    with file_lock(root / f".lock-{task}-seed{seed}"):
        run(make_config(task, seed, quick=True), out=out, quiet=True, until=stage)
    return out if stage == "report" else out / stage


def quick_extra(task, name, train, seed=0):
    """Run directory `name` beside the cached quick pipeline of `task`, made once by `train(run_dir)`.

    For runs outside the pipeline's stages (Safe RLHF's cost model, pairwise PPO, ...) that tests
    and notebooks share: same cache folder (so a code change retrains them too), a lock of
    their own. `train` may call `quick_run` and `quick_extra` for the runs it starts from.
    """
    run_dir = quick_run(task, "pretrain", seed).parent / name
    with file_lock(run_dir.parent.parent / f".lock-{task}-seed{seed}-{name}"):
        if not is_complete(run_dir):
            train(run_dir)
    return run_dir


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock on the file `path` while the block runs (other processes wait for it).

    POSIX has `fcntl.flock`; Windows has no fcntl, and locks the file's first byte with `msvcrt.locking`
    instead, retried until it is free. Either lock dies with its process, so a killed worker never
    leaves the cache locked.
    """
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:                 # Windows
            import msvcrt
            while True:
                try:
                    handle.seek(0)
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)   # retries for 10 s, then raises
                    break
                except OSError:
                    time.sleep(0.1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def source_hash():
    """First 12 hex digits of the SHA-256 of every .py file of the package."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
