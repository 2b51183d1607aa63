"""The toy world: tasks with a hidden gold judge, simulated annotators, metrics."""
