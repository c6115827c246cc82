"""The fp8jax command: `commands` (arguments, exit status, errors), `progress`, `demo`."""

from fp8jax.cli.commands import console, main

__all__ = ["console", "main"]
