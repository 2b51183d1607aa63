"""The package's layout is its architecture: imports point one way and files stay readable.

Every module of `minirlhf` lives in a layer folder, and a module may import only from its own
layer or the ones below it (read with `ast`, lazy imports inside functions included):

    engine → lm → world → stages → variants → app

Inside `stages/`, the pieces every stage shares (config, runs, experience) import no stage, and
no module anywhere imports another module's private (`_name`) names. Each file stays within a
budget of lines a reader can take in one sitting.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minirlhf"
LAYERS = ["engine", "lm", "world", "stages", "variants", "app"]
SHARED_BY_STAGES = {"minirlhf.stages.config", "minirlhf.stages.runs", "minirlhf.stages.experience"}
LINE_BUDGET = 320
# the Tensor keeps every primitive op with its backward beside it (micrograd's layout), so the engine's
# one class may run longer; everything speed-only is in engine/kernels.py
LONGER = {"engine/autograd.py": 400}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source, name, is_package=False):
    """(imported module, imported names) of every import in `source`, relative imports resolved."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            if node.module is None:       # `from . import functional`
                yield from ((f"{target}.{n}", []) for n in names)
            else:
                yield target, names
        elif isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)


def layer(module):
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def violations(source, name, is_package=False):
    """What is wrong with the imports of module `name`, as messages (none: it keeps the layering)."""
    own, found = layer(name), []
    for target, names in imports(source, name, is_package):
        if not target.startswith("minirlhf."):
            continue
        if layer(target) is None or layer(target) > own:
            found.append(f"{name} ({LAYERS[own]}) imports {target}, which is not in its layer or one below")
        if any(n.startswith("_") for n in names):
            found.append(f"{name} imports the private names {names} of {target}")
        if name in SHARED_BY_STAGES and target not in SHARED_BY_STAGES and layer(target) == own:
            found.append(f"{name}, shared by every stage, imports the stage {target}")
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_layer_folder():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert [str(p) for p in MODULES if layer(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    assert violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py") == []


def test_the_checker_finds_upward_private_and_stage_imports():
    assert violations("from ..stages.ppo import train_ppo", "minirlhf.engine.autograd")
    assert violations("from minirlhf.app.cli import main", "minirlhf.variants.grpo")
    assert violations("from .logprobs import _shift", "minirlhf.lm.sampling")
    assert violations("from .ppo import compute_gae", "minirlhf.stages.runs")
    assert violations("from ..engine import functional as F\nfrom .runs import Run", "minirlhf.stages.ppo") == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_within_the_line_budget(path):
    budget = LONGER.get(path.relative_to(PACKAGE).as_posix(), LINE_BUDGET)
    assert len(path.read_text(encoding="utf-8").splitlines()) <= budget
