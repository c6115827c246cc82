"""The benchmark suite behind benchmarks/run.py, one module per concern.

- registry: what is measured (the data, the sizes, the cases, the peers, the floors, the
  bit checks);
- measure: the timing loop (first call, warm-up, interleaved floors, medians);
- report: floor fractions, the target ratios, the tables, the JSON;
- plot: the PNG.

See benchmarks/README.md.
"""
