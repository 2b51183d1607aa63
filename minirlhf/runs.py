"""Run directories: the files every stage writes and every later stage reads.

A run directory (default `runs/<stage>-<timestamp>`) has one fixed layout:

    config.json      {"stage", "task", "init", "model_type", "model_config", "stage_config"}
    tokenizer.json   the tokenizer, so the run can be loaded without its task
    model.npz        final weights (the stage's main model; extra models as `<name>.npz`)
    checkpoint/      state.npz: model, optimizer and RNG state, for an exact `--resume`
    metrics.jsonl    one JSON object per logged step
    summary.json     the stage's final numbers; its presence marks the run complete
    *.png            plots of the curves

`load_run(dir) -> (model, tokenizer, config)` rebuilds the model of any stage from these files.
Everything is written atomically (temp file + rename) and arrays are read with
`allow_pickle=False`, so an interrupted run never leaves a half-written file and a run directory
can never execute code.

The training-loop helpers every stage uses also live here: `training_step` (backward, NaN/inf
check naming the step and tensor, clipping, update), `MetricsLog`, `progress` (a tqdm bar with the
live loss, silent in quiet mode), `StopOnInterrupt` + `end_of_step` (Ctrl-C finishes the step,
saves a checkpoint and stops), `save_checkpoint` / `load_checkpoint`, and `plot_curves`.
"""
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .model import GPT, GPTConfig, ScalarHeadModel
from .nn import load_state_dict_file, save_state_dict
from .optim import clip_grad_norm
from .tokenizer import load_tokenizer

MODEL_TYPES = {"gpt": GPT, "scalar": ScalarHeadModel}


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or inf; training stops instead of silently diverging."""


def new_run_dir(stage, out=None):
    """`out` if given, else `runs/<stage>-<YYYYmmdd-HHMMSS>`; created, returned as a Path."""
    run_dir = Path(out) if out is not None else Path("runs") / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_text_atomic(path, text):
    """Write `text` to `path` through a temp file in the same folder and `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(value):
    """numpy scalars and Paths inside configs and metrics become plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ----------------------------------------------------------------------------- saving a run

def save_run(run_dir, *, stage, task, model, tokenizer, stage_config, init=None):
    """Write config.json, tokenizer.json and model.npz of a finished (or initialised) stage."""
    run_dir = Path(run_dir)
    model_type = "scalar" if isinstance(model, ScalarHeadModel) else "gpt"
    write_json(run_dir / "config.json", {
        "stage": stage, "task": task, "init": None if init is None else str(init),
        "model_type": model_type, "model_config": model.config.to_dict(),
        "stage_config": stage_config})
    tokenizer.save(run_dir / "tokenizer.json")
    save_state_dict(run_dir / "model.npz", model.state_dict())


def save_model(run_dir, name, model):
    """An extra model of a run (e.g. PPO's value model) as `<name>.npz`, with its type and config."""
    save_state_dict(Path(run_dir) / f"{name}.npz", model.state_dict())
    model_type = "scalar" if isinstance(model, ScalarHeadModel) else "gpt"
    write_json(Path(run_dir) / f"{name}.json", {"model_type": model_type, "model_config": model.config.to_dict()})


def load_run(run_dir, model_name="model"):
    """(model, tokenizer, config) of any stage's run directory; the model is in eval mode."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a minirlhf run directory (no config.json)")
    config = read_json(config_path)
    spec = config if model_name == "model" else read_json(run_dir / f"{model_name}.json")
    model = _build_model(spec, load_state_dict_file(run_dir / f"{model_name}.npz"))
    return model, load_tokenizer(run_dir / "tokenizer.json"), config


def _build_model(spec, state):
    model_class = MODEL_TYPES[spec["model_type"]]
    model = model_class(GPTConfig(**spec["model_config"]), np.random.default_rng(0))
    model.astype(next(iter(state.values())).dtype)
    model.load_state_dict(state)
    return model.eval()


def is_complete(run_dir):
    """A stage's run is complete once its summary.json exists (written last)."""
    return (Path(run_dir) / "summary.json").is_file()


def write_summary(run_dir, summary):
    write_json(Path(run_dir) / "summary.json", summary)


def read_summary(run_dir):
    return read_json(Path(run_dir) / "summary.json")


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir, step, rng, **stateful):
    """Save `step`, the RNG state and every `name=object_with_state_dict` in checkpoint/state.npz.

    The RNG state is stored as a JSON string inside the archive (a 0-d unicode array), so the
    whole checkpoint is one file, replaced atomically, and nothing in it is pickled.
    """
    arrays = {"step": np.array(step), "rng_state": np.array(json.dumps(rng.bit_generator.state))}
    for name, obj in stateful.items():
        arrays.update({f"{name}/{key}": value for key, value in obj.state_dict().items()})
    (Path(run_dir) / "checkpoint").mkdir(parents=True, exist_ok=True)
    save_state_dict(Path(run_dir) / "checkpoint" / "state.npz", arrays)


def load_checkpoint(run_dir, rng, **stateful):
    """Restore what `save_checkpoint` stored into the given objects and `rng`; returns the step."""
    path = Path(run_dir) / "checkpoint" / "state.npz"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    arrays = load_state_dict_file(path)
    rng.bit_generator.state = json.loads(str(arrays["rng_state"]))
    for name, obj in stateful.items():
        prefix = f"{name}/"
        obj.load_state_dict({key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)})
    return int(arrays["step"])


# ----------------------------------------------------------------------------- training-loop helpers

class StopOnInterrupt:
    """Ctrl-C during training finishes the current step instead of breaking it in half.

    Inside `with StopOnInterrupt() as stop:` the first Ctrl-C only sets `stop.requested`; the
    loop's `end_of_step` then saves a checkpoint and raises KeyboardInterrupt. A second Ctrl-C
    interrupts at once. (Signal handlers exist only in the main thread; elsewhere Ctrl-C acts
    as usual and the last periodic checkpoint is what remains.)
    """

    def __init__(self):
        self.requested = False
        self.previous_handler = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info):
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)


def end_of_step(run_dir, step, total_steps, checkpoint_every, stop, rng, **stateful):
    """Checkpoint when due, at the last step, or when Ctrl-C asked to stop; then stop if asked."""
    if step % checkpoint_every == 0 or step == total_steps or stop.requested:
        save_checkpoint(run_dir, step, rng, **stateful)
    if stop.requested:
        raise KeyboardInterrupt(f"interrupted: checkpoint saved at step {step}; continue with --resume")


class MetricsLog:
    """Append-only metrics.jsonl: one line per logged step, flushed at once."""

    def __init__(self, run_dir, resume_from_step=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        rows = read_metrics(run_dir) if resume_from_step is not None and self.path.exists() else []
        # on resume, drop lines logged after the checkpoint so no step appears twice
        rows = [row for row in rows if row.get("step", 0) <= (resume_from_step or 0)]
        write_text_atomic(self.path, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows))
        self.file = open(self.path, "a", encoding="utf-8")

    def log(self, step, **metrics):
        row = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        self.file.write(json.dumps(row, default=_json_default) + "\n")
        self.file.flush()
        return row

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_metrics(run_dir):
    """The rows of a run's metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(total, desc, quiet=False, initial=0):
    """A tqdm progress bar (update it with `.update(1)` and `.set_postfix(loss=...)`)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, initial=initial, disable=quiet, dynamic_ncols=True, leave=True)


def training_step(step, loss, model, optimizer, grad_clip):
    """One update: backpropagate `loss`, stop on NaN/inf, clip the global gradient norm, step.

    Returns the gradient norm before clipping (worth logging: spikes precede divergence).
    """
    optimizer.zero_grad()
    loss.backward()
    check_finite(step, loss, model.named_parameters())
    grad_norm = clip_grad_norm(optimizer.params, grad_clip)
    optimizer.step()
    return grad_norm


def check_finite(step, loss=None, params=()):
    """Stop with the step and the tensor's name if the loss or any gradient is NaN or inf.

    `params` is an iterable of (name, Tensor) as `Module.named_parameters()` yields.
    """
    if loss is not None and not np.isfinite(loss.data).all():
        raise NonFiniteError(f"step {step}: the loss is {float(np.asarray(loss.data).ravel()[0])}")
    for name, param in params:
        if param.grad is not None and not np.isfinite(param.grad).all():
            bad = int((~np.isfinite(param.grad)).sum())
            raise NonFiniteError(f"step {step}: gradient of {name} has {bad} NaN/inf element(s)")


def plot_curves(rows, keys, path, title):
    """One panel per metric key, value against step, saved as a PNG."""
    from matplotlib.figure import Figure   # no pyplot: a notebook's plotting backend stays as it is

    keys = [k for k in keys if any(k in row for row in rows)]
    if not keys:
        return None
    fig = Figure(figsize=(4 * len(keys), 3.2))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
