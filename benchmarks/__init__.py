"""fp8jax's benchmarks: the suite (run.py, the package suite/), the other scripts, and the
helpers they share (common.py). See benchmarks/README.md.

Importing this package imports nothing else: passes.py and sharded_quantize.py must set
XLA_FLAGS before JAX starts.
"""
