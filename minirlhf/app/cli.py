"""The `minirlhf` command line (also `python -m minirlhf`).

One flag convention for every stage: `--init DIR` is the run a stage starts from, `--out DIR` is
where it writes (default `runs/<stage>-<timestamp>`), `--data FILE` replaces the toy world's data
with your own, `--resume` continues an interrupted run from its checkpoint, `--quiet` hides the
progress bar. Every field of the stage's config is a flag too (`minirlhf ppo --help` lists them
with their defaults).

A bad argument (unknown task, missing run directory, out-of-range value, mismatched vocabulary)
ends with one line saying what to change and exit code 2, not a traceback.
"""
import argparse
import dataclasses
import functools
import importlib
import sys
from pathlib import Path

import numpy as np

from minirlhf.engine.kernels import tune_allocator
from minirlhf.stages.config import add_config_flags, config_from_args, given_values


def main(argv=None):
    tune_allocator()             # glibc keeps freed memory for the next step (a no-op elsewhere)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return 2
    try:
        result = args.command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"minirlhf {args.command_name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"minirlhf {args.command_name}: {stop or 'interrupted'}", file=sys.stderr)
        return 130
    if isinstance(result, Path):
        print(f"run directory: {result}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="minirlhf", description="The RLHF pipeline in plain NumPy.")
    commands = parser.add_subparsers(title="commands")
    for name, add, help_text in COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.set_defaults(command_name=name)
        add(sub)
    return parser


def require_run_dir(path, flag="--init"):
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a minirlhf run directory (no config.json); "
                                "give the directory a previous stage wrote")
    return path


# ----------------------------------------------------------------------------- training stages

@dataclasses.dataclass
class Stage:
    """A training command: its module, config class and stage function, and the run flags it takes."""
    module: str                 # minirlhf.<layer>.<module>
    config: str                 # the config class: every field becomes a flag
    train: str                  # the stage function, called as train(config, **run flags)
    help: str
    runs: dict = dataclasses.field(default_factory=dict)    # {flag: help} of required run directories
    files: dict = dataclasses.field(default_factory=dict)   # {flag: help} of optional data files
    resume: bool = True         # takes --resume (with --out)
    quiet: bool = True          # takes --quiet


INIT = {"init": "run directory this stage starts from"}
STAGES = {
    "pretrain": Stage("stages.pretrain", "PretrainConfig", "train_pretrain",
                      "stage 1: next-token pretraining on the task's web-like corpus",
                      files={"data": "plain-text corpus (.txt one document per line, or .jsonl {'text': ...}) "
                                     "instead of the task's web text"}),
    "sft": Stage("stages.sft", "SFTConfig", "train_sft", "stage 2: supervised fine-tuning on demonstrations", INIT,
                 {"data": "SFT demonstrations, JSONL of {'prompt', 'completion'}"}),
    "reward": Stage("stages.reward", "RewardConfig", "train_reward_model",
                    "the reward model: a preference score learnt from comparisons (Bradley–Terry)", INIT,
                    {"data": "comparisons to train on, JSONL of {'prompt', 'chosen', 'rejected'[, 'margin']} or "
                             "K-wise {'prompt', 'responses', 'ranking'} (default: --comparisons labelled in the toy world)",
                     "heldout_data": "comparisons to evaluate on, same formats (default: the last "
                                     "--heldout-comparisons rows of --data)"}),
    "ppo": Stage("stages.ppo", "PPOConfig", "train_ppo",
                 "stage 3: PPO against a reward model, with a per-token KL penalty and PPO-ptx",
                 {**INIT, "reward": "run directory of the reward model (minirlhf reward); the value model starts "
                                    "from it too"}),
    "dpo": Stage("stages.dpo", "DPOConfig", "train_dpo", "direct preference optimisation of an SFT model on comparisons",
                 INIT, {"data": "preference pairs, JSONL of {'prompt', 'chosen', 'rejected'} or K-wise {'prompt', "
                                "'responses', 'ranking'} (default: --comparisons collected from the toy world)",
                        "heldout_data": "preference pairs to evaluate on, same formats (default: the last "
                                        "--heldout-fraction of the pairs)"}),
    "rlaif": Stage("variants.rlaif", "RLAIFConfig", "collect_ai_labels",
                   "RLAIF: an AI labeler (a scorer trained on few human labels) labels many comparisons",
                   {"init": "SFT run whose responses are labelled",
                    "labeler": "the AI labeler: a scoring-model run, e.g. a reward model trained on a small human "
                               "set (minirlhf reward --comparisons 200)"}, resume=False, quiet=False),
    "cost-model": Stage("variants.safe_rlhf", "CostModelConfig", "train_cost_model",
                        "Safe RLHF's cost model: harm learnt from harmlessness comparisons, > 0 = harmful",
                        {"init": "SFT run on a task with a harm criterion (assistant)"}, resume=False),
    "safe-rlhf": Stage("variants.safe_rlhf", "SafeRLHFConfig", "train_safe_rlhf",
                       "Safe RLHF: PPO-Lagrangian, helpfulness reward subject to a budget on the cost",
                       {**INIT, "reward": "run directory of the helpfulness reward model (minirlhf reward)",
                        "cost": "run directory of the cost model (minirlhf cost-model)"}),
    "pairwise-ppo": Stage("variants.pairwise_ppo", "PairwisePPOConfig", "train_pairwise_ppo",
                          "Pairwise PPO (P3O): clipped policy gradient on reward differences of two responses",
                          {**INIT, "reward": "run directory of the reward model (minirlhf reward)"}),
    "grpo": Stage("variants.grpo", "GRPOConfig", "train_grpo",
                  "critic-free RL: G responses per prompt, the group as the baseline (GRPO, RLOO, REINFORCE, Dr. GRPO)",
                  {**INIT, "reward": "run directory of the reward model (minirlhf reward) that scores each response"}),
    "rejection-sampling": Stage("variants.rejection_sampling", "RejectionSamplingConfig", "train_rejection_sampling",
                                "fine-tune a policy on its own best-of-n responses under a reward model",
                                {**INIT, "reward": "run directory of the reward model that picks the best of n"}),
    "rounds": Stage("variants.rounds", "RoundsConfig", "run_rounds",
                    "iterated RLHF: fresh comparisons of the current policy, a retrained RM, RS and/or PPO, per round",
                    {**INIT, "reward": "run directory of the first reward model; its comparisons.jsonl starts the "
                                       "growing comparison data"}),
}
# the stages of each round of `rounds`: --reward.steps, --rs.n, --ppo.kl-coef, ... (seeded by the round)
ROUND_STAGES = {"reward": ("stages.reward", "RewardConfig", ("seed", "comparisons", "heldout_comparisons", "temperature")),
                "rs": ("variants.rejection_sampling", "RejectionSamplingConfig", ("seed",)),
                "ppo": ("stages.ppo", "PPOConfig", ("seed",))}


def stage_attr(module, name):
    return getattr(importlib.import_module(f"minirlhf.{module}"), name)


def add_stage(sub, stage):
    """The flags of a training command: every config field, then --init/--reward/... and --out/--data/..."""
    if stage.module == "variants.rounds":
        add_config_flags(sub, stage_attr(stage.module, stage.config), skip=tuple(ROUND_STAGES))
        for prefix, (module, config, skip) in ROUND_STAGES.items():
            add_config_flags(sub, stage_attr(module, config), prefix=prefix, skip=skip)
    else:
        add_config_flags(sub, stage_attr(stage.module, stage.config))
    for flag, help_text in stage.runs.items():
        sub.add_argument(f"--{flag}", required=True, help=help_text)
    sub.add_argument("--out", default=None, help="run directory to write (default: runs/<stage>-<timestamp>)")
    for flag, help_text in stage.files.items():
        sub.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=help_text)
    if stage.resume:
        sub.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    if stage.quiet:
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(command=lambda args: run_stage(stage, args))


def run_stage(stage, args):
    """Build the config from the flags, check the run directories, call the stage function."""
    if stage.resume and args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR: the run directory to continue")
    nested = {prefix: config_from_args(stage_attr(module, config), args, prefix)
              for prefix, (module, config, _) in ROUND_STAGES.items()} if stage.module == "variants.rounds" else {}
    config = config_from_args(stage_attr(stage.module, stage.config), args, **nested)
    kwargs = {flag: require_run_dir(getattr(args, flag), f"--{flag}") for flag in stage.runs}
    kwargs.update({flag: getattr(args, flag) for flag in stage.files})
    kwargs.update({flag: getattr(args, flag) for flag in ("resume", "quiet") if getattr(stage, flag)})
    return stage_attr(stage.module, stage.train)(config, out=args.out, **kwargs)


def add_sample(sub):
    sub.add_argument("--init", required=True, help="run directory of the model to sample from")
    sub.add_argument("--prompt", action="append", default=None,
                     help="a prompt (repeat for several; default: 5 of the task's eval prompts)")
    sub.add_argument("--n", type=int, default=1, help="samples per prompt")
    sub.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
    sub.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    sub.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    sub.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's suggestion")
    sub.add_argument("--seed", type=int, default=0, help="sampling seed")
    sub.set_defaults(command=run_sample)


def run_sample(args):
    from minirlhf.lm.sampling import ModelPolicy
    from minirlhf.stages.runs import load_run
    from minirlhf.world.tasks import get_task
    model, tokenizer, config = load_run(require_run_dir(args.init))
    if config["model_type"] != "gpt":
        raise ValueError(f"--init {args.init} holds a {config['stage']} scoring model, not a language model")
    task = get_task(config["task"]) if config.get("task") else None
    if args.temperature < 0 or args.n < 1:
        raise ValueError("--temperature must be ≥ 0 and --n ≥ 1")
    prompts = args.prompt or (task.prompts("eval")[:5] if task else None)
    if not prompts:
        raise ValueError("this run has no task: give --prompt")
    max_new = args.max_new_tokens or (task.max_response_tokens if task else 32)
    policy = ModelPolicy(model, tokenizer, max_new, args.temperature, args.top_k, args.top_p)
    rng = np.random.default_rng(args.seed)
    for prompt in prompts:
        for response in policy([prompt] * args.n, rng):
            gold = f"   [gold {task.gold_reward(prompt, response):+.2f}]" if task else ""
            print(f"{prompt} | {response}{gold}")


def add_export(sub):
    sub.add_argument("--ckpt", required=True, help="run directory of any stage holding a GPT (or a scalar-head model)")
    sub.add_argument("--out", required=True, help="folder to write the Hugging Face checkpoint into")
    sub.add_argument("--model", default="model", help="which model of the run: model (the stage's own) or an "
                                                      "extra one such as value (PPO's value model)")
    sub.set_defaults(command=run_export)


def run_export(args):
    from minirlhf.app.export import export_hf
    from minirlhf.stages.runs import read_json
    out = export_hf(require_run_dir(args.ckpt, "--ckpt"), args.out, args.model)
    architecture = read_json(out / "config.json")["architectures"][0]
    print(f"{architecture} checkpoint: {out}  (load it with transformers' {architecture}.from_pretrained)")


def add_annotate(sub):
    from minirlhf.app.annotate import AnnotateConfig
    add_config_flags(sub, AnnotateConfig)
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--init", help="run directory of the policy whose samples you compare (two per prompt)")
    source.add_argument("--from", dest="candidates", help="JSONL of pre-sampled responses instead, one "
                                                         "{'prompt', 'responses': [...]} a line")
    sub.add_argument("--task", default=None, help="toy task whose gold judge measures your agreement; needed "
                                                  "with --from, with --init the run's task")
    sub.add_argument("--out", default="prefs.jsonl", help="pairwise JSONL the labels are appended to; "
                                                          "the same file again resumes")
    sub.add_argument("--name", default=None, help="the 'annotator' field of your rows; unset: human:<login name>")
    sub.set_defaults(command=run_annotate)


def run_annotate(args):
    from minirlhf.app.annotate import AnnotateConfig, label_pairs
    config = config_from_args(AnnotateConfig, args)
    label_pairs(config, out=args.out, task=args.task, init=args.init and require_run_dir(args.init),
                candidates=args.candidates, name=args.name)


def add_experiment(sub):
    sub.add_argument("name", help="which: a module of minirlhf/app/experiments/ with a main(argv), e.g. rm-scaling "
                                  "for rm_scaling.py")
    sub.add_argument("args", nargs=argparse.REMAINDER, help="the experiment's own flags (NAME --help lists them)")
    sub.set_defaults(command=run_experiment)


def run_experiment(args):
    import pkgutil

    from minirlhf.app import experiments
    names = sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(experiments.__path__))
    if args.name not in names:
        raise ValueError(f"unknown experiment {args.name!r}; choose one of {', '.join(names)}")
    return importlib.import_module(f"{experiments.__name__}.{args.name.replace('-', '_')}").main(args.args)


def add_pipeline(sub):
    from minirlhf.app.pipeline import STAGE_CONFIGS, PipelineConfig
    from minirlhf.world.tasks import TASK_NAMES
    sub.add_argument("--task", default="sentiment", help=f"built-in toy task ({', '.join(TASK_NAMES)})")
    sub.add_argument("--quick", action="store_true", help="small settings for a first look (about a minute)")
    sub.add_argument("--seed", type=int, default=0, help="seeds every stage")
    sub.add_argument("--out", default=None, help="pipeline directory (default: runs/pipeline-<timestamp>); "
                                                 "re-running with the same --out resumes, skipping finished stages")
    sub.add_argument("--config", default=None, help="JSON file of settings, {stage: {field: value}} "
                                                    "(\"pipeline\" for the report's fields); flags override it")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(sub, PipelineConfig, "pipeline", skip=("task", "seed", "quick", *STAGE_CONFIGS),
                     only_given=True)
    for stage, config_class in STAGE_CONFIGS.items():
        add_config_flags(sub, config_class, stage, skip=("task", "seed"), only_given=True)
    sub.set_defaults(command=run_pipeline)


def run_pipeline(args):
    import json

    from minirlhf.app.pipeline import STAGE_CONFIGS, PipelineConfig, make_config, run
    overrides = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            overrides = json.load(f)
        unknown = set(overrides) - {"pipeline", *STAGE_CONFIGS}
        if unknown:
            raise ValueError(f"--config {args.config}: unknown sections {sorted(unknown)}; "
                             f"allowed: pipeline, {', '.join(STAGE_CONFIGS)}")
    for stage, config_class in {"pipeline": PipelineConfig, **STAGE_CONFIGS}.items():
        overrides[stage] = {**overrides.get(stage, {}), **given_values(config_class, args, stage)}
    config = make_config(args.task, args.seed, args.quick, overrides)
    return run(config, out=args.out, quiet=args.quiet)["out"]


COMMANDS = [("pipeline", add_pipeline, "the main job: the whole recipe on a toy task, ending in report.md"),
            *((name, functools.partial(add_stage, stage=stage), stage.help) for name, stage in STAGES.items()),
            ("annotate", add_annotate, "be the human: label pairs of responses in the terminal, for reward --data "
                                       "and dpo --data"),
            ("sample", add_sample, "sample responses from a trained model"),
            ("experiment", add_experiment, "run a measured experiment that writes its plots and numbers into docs/"),
            ("export", add_export, "write a run's model as a Hugging Face GPT-2 checkpoint folder (for PyTorch/TRL)")]
