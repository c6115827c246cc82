"""The fp8jax command."""

from fp8jax.cli.main import console
from fp8jax.cli.main import main

__all__ = ["console", "main"]
