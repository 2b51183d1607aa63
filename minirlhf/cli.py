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
import sys
from pathlib import Path

import numpy as np

from .config import add_config_flags, config_from_args, given_values


def main(argv=None):
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


def add_run_flags(sub, init=True, data_help=None):
    """The flags every training stage shares."""
    if init:
        sub.add_argument("--init", required=True, help="run directory this stage starts from")
    sub.add_argument("--out", default=None, help="run directory to write (default: runs/<stage>-<timestamp>)")
    if data_help:
        sub.add_argument("--data", default=None, help=data_help)
    sub.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")


def require_run_dir(path, flag="--init"):
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: not a minirlhf run directory (no config.json); "
                                "give the directory a previous stage wrote")
    return path


def require_resumable(args):
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR: the run directory to continue")


# ----------------------------------------------------------------------------- stages

def add_pretrain(sub):
    from .pretrain import PretrainConfig
    add_config_flags(sub, PretrainConfig)
    add_run_flags(sub, init=False, data_help="plain-text corpus (.txt one document per line, or .jsonl "
                                             "{'text': ...}) instead of the task's web text")
    sub.set_defaults(command=run_pretrain)


def run_pretrain(args):
    from .pretrain import PretrainConfig, pretrain
    require_resumable(args)
    config = config_from_args(PretrainConfig, args)
    return pretrain(config, out=args.out, data=args.data, resume=args.resume, quiet=args.quiet)


def add_sft(sub):
    from .sft import SFTConfig
    add_config_flags(sub, SFTConfig)
    add_run_flags(sub, data_help="SFT demonstrations, JSONL of {'prompt', 'completion'}")
    sub.set_defaults(command=run_sft)


def run_sft(args):
    from .sft import SFTConfig, sft
    require_resumable(args)
    config = config_from_args(SFTConfig, args)
    return sft(config, init=require_run_dir(args.init), out=args.out, data=args.data, resume=args.resume,
               quiet=args.quiet)


def add_reward(sub):
    from .reward import RewardConfig
    add_config_flags(sub, RewardConfig)
    add_run_flags(sub, data_help="comparisons to train on, JSONL of {'prompt', 'chosen', 'rejected'[, 'margin']} "
                                 "or K-wise {'prompt', 'responses', 'ranking'} (default: --comparisons labelled "
                                 "in the toy world)")
    sub.add_argument("--heldout-data", default=None, help="comparisons to evaluate on, same formats "
                                                          "(default: the last --heldout-comparisons rows of --data)")
    sub.set_defaults(command=run_reward)


def run_reward(args):
    from .reward import RewardConfig, reward
    require_resumable(args)
    config = config_from_args(RewardConfig, args)
    return reward(config, init=require_run_dir(args.init), out=args.out, data=args.data,
                  heldout_data=args.heldout_data, resume=args.resume, quiet=args.quiet)


def add_ppo(sub):
    from .ppo import PPOConfig
    add_config_flags(sub, PPOConfig)
    add_run_flags(sub)
    sub.add_argument("--reward", required=True, help="run directory of the reward model (minirlhf reward); "
                                                     "the value model starts from it too")
    sub.set_defaults(command=run_ppo)


def run_ppo(args):
    from .ppo import PPOConfig, ppo
    require_resumable(args)
    config = config_from_args(PPOConfig, args)
    return ppo(config, init=require_run_dir(args.init), reward=require_run_dir(args.reward, "--reward"), out=args.out,
               resume=args.resume, quiet=args.quiet)


def add_dpo(sub):
    from .dpo import DPOConfig
    add_config_flags(sub, DPOConfig)
    add_run_flags(sub, data_help="preference pairs, JSONL of {'prompt', 'chosen', 'rejected'} or K-wise "
                                 "{'prompt', 'responses', 'ranking'} (default: --comparisons collected from the toy world)")
    sub.add_argument("--heldout-data", default=None, help="preference pairs to evaluate on, same formats "
                                                          "(default: the last --heldout-fraction of the pairs)")
    sub.set_defaults(command=run_dpo)


def run_dpo(args):
    from .dpo import DPOConfig, dpo
    require_resumable(args)
    config = config_from_args(DPOConfig, args)
    return dpo(config, init=require_run_dir(args.init), out=args.out, data=args.data, heldout_data=args.heldout_data,
               resume=args.resume, quiet=args.quiet)


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
    from .runs import load_run
    from .sampling import ModelPolicy
    from .tasks import get_task
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


def add_rlaif(sub):
    from .rlaif import RLAIFConfig
    add_config_flags(sub, RLAIFConfig)
    sub.add_argument("--init", required=True, help="SFT run whose responses are labelled")
    sub.add_argument("--labeler", required=True, help="the AI labeler: a scoring-model run, e.g. a reward model "
                                                      "trained on a small human set (minirlhf reward --comparisons 200)")
    sub.add_argument("--out", default=None, help="folder to write (default: runs/rlaif-<timestamp>)")
    sub.set_defaults(command=run_rlaif)


def run_rlaif(args):
    from .rlaif import RLAIFConfig, rlaif
    config = config_from_args(RLAIFConfig, args)
    return rlaif(config, init=require_run_dir(args.init), labeler=require_run_dir(args.labeler, "--labeler"),
                 out=args.out)


def add_cost_model(sub):
    from .safe_rlhf import CostModelConfig
    add_config_flags(sub, CostModelConfig)
    sub.add_argument("--init", required=True, help="SFT run on a task with a harm criterion (assistant)")
    sub.add_argument("--out", default=None, help="run directory to write (default: runs/cost-<timestamp>)")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(command=run_cost_model)


def run_cost_model(args):
    from .safe_rlhf import CostModelConfig, cost_model
    config = config_from_args(CostModelConfig, args)
    return cost_model(config, init=require_run_dir(args.init), out=args.out, quiet=args.quiet)


def add_safe_rlhf(sub):
    from .safe_rlhf import SafeRLHFConfig
    add_config_flags(sub, SafeRLHFConfig)
    add_run_flags(sub)
    sub.add_argument("--reward", required=True, help="run directory of the helpfulness reward model (minirlhf reward)")
    sub.add_argument("--cost", required=True, help="run directory of the cost model (minirlhf cost-model)")
    sub.set_defaults(command=run_safe_rlhf)


def run_safe_rlhf(args):
    from .safe_rlhf import SafeRLHFConfig, safe_rlhf
    require_resumable(args)
    config = config_from_args(SafeRLHFConfig, args)
    return safe_rlhf(config, init=require_run_dir(args.init), reward=require_run_dir(args.reward, "--reward"),
                     cost=require_run_dir(args.cost, "--cost"), out=args.out, resume=args.resume, quiet=args.quiet)


def add_pairwise_ppo(sub):
    from .pairwise_ppo import PairwisePPOConfig
    add_config_flags(sub, PairwisePPOConfig)
    add_run_flags(sub)
    sub.add_argument("--reward", required=True, help="run directory of the reward model (minirlhf reward)")
    sub.set_defaults(command=run_pairwise_ppo)


def run_pairwise_ppo(args):
    from .pairwise_ppo import PairwisePPOConfig, pairwise_ppo
    require_resumable(args)
    config = config_from_args(PairwisePPOConfig, args)
    return pairwise_ppo(config, init=require_run_dir(args.init), reward=require_run_dir(args.reward, "--reward"),
                        out=args.out, resume=args.resume, quiet=args.quiet)


def add_rejection_sampling(sub):
    from .rejection_sampling import RejectionSamplingConfig
    add_config_flags(sub, RejectionSamplingConfig)
    add_run_flags(sub)
    sub.add_argument("--reward", required=True, help="run directory of the reward model that picks the best of n")
    sub.set_defaults(command=run_rejection_sampling)


def run_rejection_sampling(args):
    from .rejection_sampling import RejectionSamplingConfig, rejection_sampling
    require_resumable(args)
    config = config_from_args(RejectionSamplingConfig, args)
    return rejection_sampling(config, init=require_run_dir(args.init), reward=require_run_dir(args.reward, "--reward"),
                              out=args.out, resume=args.resume, quiet=args.quiet)


def add_rounds(sub):
    from .ppo import PPOConfig
    from .rejection_sampling import RejectionSamplingConfig
    from .reward import RewardConfig
    from .rounds import RoundsConfig
    add_config_flags(sub, RoundsConfig, skip=("reward", "rs", "ppo"))
    # each round's stages: --reward.steps, --rs.n, --ppo.kl-coef, ... (seeded by the round)
    add_config_flags(sub, RewardConfig, prefix="reward", skip=("seed", "comparisons", "heldout_comparisons", "temperature"))
    add_config_flags(sub, RejectionSamplingConfig, prefix="rs", skip=("seed",))
    add_config_flags(sub, PPOConfig, prefix="ppo", skip=("seed",))
    add_run_flags(sub)
    sub.add_argument("--reward", required=True, help="run directory of the first reward model; its "
                                                     "comparisons.jsonl starts the growing comparison data")
    sub.set_defaults(command=run_rounds)


def run_rounds(args):
    from .ppo import PPOConfig
    from .rejection_sampling import RejectionSamplingConfig
    from .reward import RewardConfig
    from .rounds import RoundsConfig, rounds
    require_resumable(args)
    config = config_from_args(RoundsConfig, args, reward=config_from_args(RewardConfig, args, "reward"),
                              rs=config_from_args(RejectionSamplingConfig, args, "rs"),
                              ppo=config_from_args(PPOConfig, args, "ppo"))
    return rounds(config, init=require_run_dir(args.init), reward=require_run_dir(args.reward, "--reward"),
                  out=args.out, resume=args.resume, quiet=args.quiet)


def add_export(sub):
    sub.add_argument("--ckpt", required=True, help="run directory of any stage holding a GPT (or a scalar-head model)")
    sub.add_argument("--out", required=True, help="folder to write the Hugging Face checkpoint into")
    sub.add_argument("--model", default="model", help="which model of the run: model (the stage's own) or an "
                                                      "extra one such as value (PPO's value model)")
    sub.set_defaults(command=run_export)


def run_export(args):
    from .export import export_hf
    from .runs import read_json
    out = export_hf(require_run_dir(args.ckpt, "--ckpt"), args.out, args.model)
    architecture = read_json(out / "config.json")["architectures"][0]
    print(f"{architecture} checkpoint: {out}  (load it with transformers' {architecture}.from_pretrained)")


def add_annotate(sub):
    from .annotate import AnnotateConfig
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
    from .annotate import AnnotateConfig, label_pairs
    config = config_from_args(AnnotateConfig, args)
    label_pairs(config, out=args.out, task=args.task, init=args.init and require_run_dir(args.init),
                candidates=args.candidates, name=args.name)


def add_experiment(sub):
    sub.add_argument("name", help="which: a module of minirlhf/experiments/ with a main(argv), e.g. rm-scaling "
                                  "for rm_scaling.py")
    sub.add_argument("args", nargs=argparse.REMAINDER, help="the experiment's own flags (NAME --help lists them)")
    sub.set_defaults(command=run_experiment)


def run_experiment(args):
    import importlib
    import pkgutil
    from . import experiments
    names = sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(experiments.__path__))
    if args.name not in names:
        raise ValueError(f"unknown experiment {args.name!r}; choose one of {', '.join(names)}")
    return importlib.import_module(f"{experiments.__name__}.{args.name.replace('-', '_')}").main(args.args)


def add_pipeline(sub):
    from .pipeline import PipelineConfig, STAGE_CONFIGS
    from .tasks import TASK_NAMES
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
    from .pipeline import PipelineConfig, STAGE_CONFIGS, make_config, run
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


COMMANDS = [
    ("pipeline", add_pipeline, "the main job: the whole recipe on a toy task, ending in report.md"),
    ("pretrain", add_pretrain, "stage 1: next-token pretraining on the task's web-like corpus"),
    ("sft", add_sft, "stage 2: supervised fine-tuning on demonstrations"),
    ("annotate", add_annotate, "be the human: label pairs of responses in the terminal, for reward --data and dpo --data"),
    ("reward", add_reward, "the reward model: a preference score learnt from comparisons (Bradley–Terry)"),
    ("sample", add_sample, "sample responses from a trained model"),
    ("experiment", add_experiment, "run a measured experiment that writes its plots and numbers into docs/"),
    ("ppo", add_ppo, "stage 3: PPO against a reward model, with a per-token KL penalty and PPO-ptx"),
    ("dpo", add_dpo, "direct preference optimisation of an SFT model on comparisons"),
    ("rlaif", add_rlaif, "RLAIF: an AI labeler (a scorer trained on few human labels) labels many comparisons"),
    ("cost-model", add_cost_model, "Safe RLHF's cost model: harm learnt from harmlessness comparisons, > 0 = harmful"),
    ("safe-rlhf", add_safe_rlhf, "Safe RLHF: PPO-Lagrangian, helpfulness reward subject to a budget on the cost"),
    ("pairwise-ppo", add_pairwise_ppo, "Pairwise PPO (P3O): clipped policy gradient on reward differences of two responses"),
    ("rejection-sampling", add_rejection_sampling, "fine-tune a policy on its own best-of-n responses under a reward model"),
    ("rounds", add_rounds, "iterated RLHF: fresh comparisons of the current policy, a retrained RM, RS and/or PPO, per round"),
    ("export", add_export, "write a run's model as a Hugging Face GPT-2 checkpoint folder (for PyTorch/TRL)"),
]
