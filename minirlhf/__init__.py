"""minirlhf: the RLHF pipeline in plain NumPy, small enough to read and run on a laptop."""
