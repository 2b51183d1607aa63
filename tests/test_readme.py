"""The README keeps its promises: two quick-start commands, results generated from the published
pipeline run (never typed), and a file tree that names every module."""
import re
from pathlib import Path

from minirlhf.app.experiments.pipeline import readme_section, replace_section, section_in
from minirlhf.stages.runs import read_json

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_quick_start_is_two_commands_one_for_the_pipeline_one_for_the_tests():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```\n(.*?)\n```", quick_start, re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    pipeline, tests = commands
    assert pipeline.startswith("python3 -m venv .venv && ") and pipeline.endswith("minirlhf pipeline")
    assert tests.startswith("python3 -m venv .venv && ") and tests.endswith("-m pytest -q -n 2")
    # CI runs the command between the test-command markers: it must be this one
    marked = README.split("<!-- test-command -->", 1)[1].split("<!-- /test-command -->", 1)[0]
    assert tests in marked


def test_results_section_is_generated_from_the_published_pipeline_run():
    published = ROOT / "docs" / "results" / "pipeline"
    assert section_in(README) == readme_section(read_json(published / "results.json"))
    for image in re.findall(r"\]\((docs/results/pipeline/[^)]+)\)", section_in(README)):
        assert (ROOT / image).is_file(), image
    report = (published / "report.md").read_text(encoding="utf-8")
    for image in re.findall(r"\]\(([^)]+\.png)\)", report):   # every plot the published report shows
        assert (published / image).is_file(), image


def test_replace_section_keeps_everything_around_the_markers():
    text = "a\n<!-- results -->\nold\n<!-- /results -->\nb\n"
    assert replace_section(text, "new") == "a\n<!-- results -->\nnew\n<!-- /results -->\nb\n"
    assert section_in(replace_section(text, "new")) == "new"


def tree_paths(tree):
    """Every path the README's indented file tree names: a folder line (ending in /) holds the deeper lines."""
    paths, folders = set(), []
    for line in re.findall(r"```\n(.*?)\n```", tree, re.S)[0].splitlines():
        indent, name = len(line) - len(line.lstrip()), line.split()[0]
        folders = [(i, f) for i, f in folders if i < indent]
        path = "".join(f for _, f in folders) + name
        paths.add(path)
        if name.endswith("/"):
            folders.append((indent, name))
    return paths


def test_file_tree_names_every_module_and_notebooks_follow_the_reading_order():
    tree = README.split("## Files", 1)[1]
    named = tree_paths(tree)
    for path in sorted((ROOT / "minirlhf").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        assert name in named, f"{name} is missing from the README's file tree"
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    reading = README.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    assert notebooks[0].startswith("00_") and notebooks[0] in reading
    for name in notebooks[1:]:
        assert f"| {name} |" in reading, f"{name} is missing from the reading order"
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in README, f"docs/{page.name} is not linked from the README"
