"""Safetensors checkpoints: quantize, dequantize and convert them, inspect them.

One job per module:

  errors.py          CheckpointError (its `param` names the argument at fault)
  interrupts.py      Ctrl-C and SIGTERM: stop between tensors, never half-way through a rename
  files.py           atomic_write, staged_folder: outputs appear complete or not at all
  strict_json.py     JSON read strictly: one clear error for whatever Python's json lets through
  safetensors_io.py  the safetensors format, read and written one tensor at a time
  source.py          Checkpoint, open_checkpoint: a file, an index or a folder, validated
  stored.py          WeightLayout: how a quantized weight is stored (dtypes, shapes, names)
  metadata.py        QuantMetadata: what a quantized file records under `fp8jax`
  selection.py       which tensors get quantized
  layouts.py         the stored layouts of each stack: compressed-tensors, vLLM, ModelOpt, fp8jax
  output.py          OUT checked against IN and staged until complete; a folder's other files
  report.py          TensorReport, Summary; printable (names that cannot drive the terminal)
  staging.py         reading, computing and writing pieces at the same time
  foreign.py         checkpoints other stacks quantized, read as each one dequantizes
  pipeline.py        quantize_checkpoint, dequantize_checkpoint, convert_checkpoint: one driver
  inspection.py      `fp8jax inspect`: range and error report, histogram plot
"""
