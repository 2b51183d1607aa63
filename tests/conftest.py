"""Shared test settings: the cache of quick trained runs lives inside the checkout.

`minirlhf.pipeline.quick_run` trains tiny runs once and reuses them; pointing its cache at
`.cache/quick-runs` keeps a test session from writing into the home directory, and lets the
notebooks executed by the tests (which inherit this environment) reuse the same runs.
"""
import os
from pathlib import Path

os.environ.setdefault("MINIRLHF_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "quick-runs"))
