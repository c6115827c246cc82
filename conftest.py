"""Doctests run with the names their examples use: jax, jnp, np and the public fp8jax API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax

_SPEC_NAMES = ("QuantSpec", "Tensor", "Axis", "Block", "MX", "Static")


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  # Only names no module defines itself: the namespace overrides a module's globals.
  doctest_namespace.update(jax=jax, jnp=jnp, np=np, fp8jax=fp8jax)
  doctest_namespace.update({name: getattr(fp8jax, name) for name in _SPEC_NAMES})
  try:
    import torch
  except ImportError:  # the torch bridge's examples need it; the rest do not
    return
  doctest_namespace["torch"] = torch
