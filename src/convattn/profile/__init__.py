"""Parameters, MACs and measured latency."""
from .counting import Complexity, count_complexity, count_macs_dispatch, count_macs_hooks, count_params
from .latency import Timing, measure_latency
from .runner import ProfileConfig, profile, show_profile, write_profile

__all__ = ["Complexity", "count_complexity", "count_macs_dispatch", "count_macs_hooks", "count_params", "Timing",
           "measure_latency", "ProfileConfig", "profile", "show_profile", "write_profile"]
