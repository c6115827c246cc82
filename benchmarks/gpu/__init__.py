"""A one-command check of fp8jax on a GPU machine: bits against the CPU, speed, goals.

See README.md here; run `bash benchmarks/gpu/run.sh OUTDIR` from the repository root.
"""
