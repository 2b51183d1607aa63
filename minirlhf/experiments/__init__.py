"""Experiments: scripts that train several runs and write their plots and numbers into docs/.

Each module has a `main(argv=None)` and runs as `minirlhf experiment NAME` (or
`python -m minirlhf.experiments.NAME`); they take minutes and are not part of the test suite
(the suite checks each claim at quick settings).
"""
