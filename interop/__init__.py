"""The PyTorch bridge of fp8jax (zero-copy DLPack exchange); not built yet."""
