"""Triton kernels (installed as ``elmo_fast.kernels``). Each file: kernels + autograd.Function + entry."""
