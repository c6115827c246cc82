"""`python -m fp8jax`: the `fp8jax` command."""

from fp8jax.cli import console

if __name__ == "__main__":
  console()
