"""The engine: a reverse-mode autograd on NumPy, fused stable kernels, layers, optimizers, gradcheck."""
