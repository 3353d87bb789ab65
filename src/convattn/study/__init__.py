"""Comparative studies: baseline and attention variants under one recipe and several seeds."""
from .compare import CompareConfig, run_compare

__all__ = ["CompareConfig", "run_compare"]
