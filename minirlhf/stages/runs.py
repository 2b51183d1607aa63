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

The bookkeeping of a training run lives here too, in one place that every stage uses the same
way: `Run` (directory, resume, metrics log, progress bar, Ctrl-C, checkpoints, final plots and
summary). It never touches a loss; each stage's update function is where the algorithm is.
"""
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from minirlhf.engine.nn import load_state_dict_file, save_state_dict
from minirlhf.engine.optim import NonFiniteError
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.lm.tokenizer import load_tokenizer

MODEL_TYPES = {"gpt": GPT, "scalar": ScalarHeadModel}


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


def append_line(path, line):
    """Append one JSON line, flushed and fsynced before returning (a crash afterwards loses nothing)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_last_line(path, line):
    """Rewrite `path` without its last line, atomically, after checking it is `line`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines or lines[-1].rstrip("\n") != line:
        raise ValueError(f"cannot undo: the last line of {path} is not the decision this session wrote "
                         "(was the file changed meanwhile?)")
    write_text_atomic(path, "".join(lines[:-1]))


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


# ----------------------------------------------------------------------------- the bookkeeping of a training run

class Run:
    """Everything a training loop does besides the algorithm, the same way in every stage.

        run = Run("sft", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
                  checkpoint_every=config.checkpoint_every, model=model, optimizer=optimizer)
        with run:
            while run.step < config.steps:
                stats = sft_update(model, optimizer, batch, config.grad_clip)     # the algorithm
                run.log(**stats)          # step + 1, metrics.jsonl, progress bar, checkpoint, Ctrl-C
        run.save(stage="sft", task=..., model=model, tokenizer=tokenizer, stage_config=..., init=init)
        run.finish(summary, curves=["loss", "heldout_loss"], title="SFT")

    `Run` makes (or, with `resume`, reopens) the run directory, restores the checkpoint of every
    `name=object` with a state dict (and the RNG) so a resumed run continues bit for bit, appends
    one line per step to metrics.jsonl, draws the progress bar, and checkpoints every
    `checkpoint_every` steps and at the last (0: never, for a run that cannot resume). The first Ctrl-C only asks to stop: the step under
    way finishes, a checkpoint is saved and KeyboardInterrupt names it (a second Ctrl-C stops at
    once; signal handlers exist only in the main thread). A NaN/inf from `optim.check_finite`
    leaves the loop with the step added to its message. `Run` never sees a loss: it is not a
    Trainer, and the loop stays in the stage.
    """

    def __init__(self, stage, out, *, resume, quiet, steps, rng, checkpoint_every, **stateful):
        self.dir = new_run_dir(stage, out)
        self.stage, self.steps, self.rng, self.checkpoint_every = stage, steps, rng, checkpoint_every
        self.stateful, self.quiet, self.resume = stateful, quiet, resume
        self.step = load_checkpoint(self.dir, rng, **stateful) if resume else 0
        self.started = time.time()
        self.stop_requested = False

    def __enter__(self):
        path = self.dir / "metrics.jsonl"
        # on resume, keep the lines logged up to the checkpoint, so no step appears twice
        rows = [row for row in read_metrics(self.dir) if row["step"] <= self.step] if (
            self.resume and path.exists()) else []
        write_text_atomic(path, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows))
        self.metrics = open(path, "a", encoding="utf-8")
        from tqdm import tqdm
        self.bar = tqdm(total=self.steps, desc=self.stage, initial=self.step, disable=self.quiet,
                        dynamic_ncols=True, leave=True)
        self.previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)
        return self

    def _on_ctrl_c(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def log_start(self, **metrics):
        """Log `metrics` at step 0, before any update (where a curve starts)."""
        self.metrics.write(json.dumps({"step": 0, **metrics}, default=_json_default) + "\n")
        self.metrics.flush()

    def due(self, every):
        """Is the step under way (the next to be logged) a multiple of `every`, or the last one?"""
        return (self.step + 1) % every == 0 or self.step + 1 == self.steps

    def log(self, show=(), **metrics):
        """End the step: count it, log `metrics` (None values dropped), show the `show` keys on the bar,
        checkpoint when due, at the last step or when Ctrl-C asked to stop; then stop if asked. -> the row."""
        self.step += 1
        row = {"step": self.step, **{k: v for k, v in metrics.items() if v is not None}}
        self.metrics.write(json.dumps(row, default=_json_default) + "\n")
        self.metrics.flush()
        self.bar.update(1)
        if show:
            self.bar.set_postfix({key: f"{row[key]:.3f}" for key in show})
        if self.checkpoint_every and (self.step % self.checkpoint_every == 0 or self.step == self.steps
                                      or self.stop_requested):
            save_checkpoint(self.dir, self.step, self.rng, **self.stateful)
        if self.stop_requested:
            raise KeyboardInterrupt(f"interrupted: checkpoint saved at step {self.step}; continue with --resume")
        return row

    def __exit__(self, exc_type, exc, traceback):
        self.metrics.close()
        self.bar.close()
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
        if isinstance(exc, NonFiniteError):
            raise NonFiniteError(f"step {self.step}: {exc}") from None

    @property
    def seconds(self):
        """Wall time since the run (or its resumed part) started."""
        return time.time() - self.started

    def save(self, **files):
        """The finished run's config.json, tokenizer.json and model.npz (`save_run`'s arguments)."""
        save_run(self.dir, **files)

    def finish(self, summary, curves=(), title=None, **panels):
        """Plot `curves` (metric keys) into curves.png and each `name=[keys]` into name.png; write summary.json
        last (it marks the run complete); -> the run directory."""
        rows = read_metrics(self.dir)
        for name, keys in {"curves": curves, **panels}.items():
            plot_curves(rows, keys, self.dir / f"{name}.png", title or self.stage)
        write_summary(self.dir, summary)
        return self.dir


def read_metrics(run_dir):
    """The rows of a run's metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(rows, keys, path, title):
    """One panel per metric key, value against step, saved as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

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
