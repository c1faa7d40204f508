"""jdet: a JAX/Flax trainer for few-shot, reference-based object detection."""

from jdet import _xla_defaults

__version__ = "0.1.0"

# Before any JAX backend starts: the opt-in JDET_XLA_CPU_CONV=eigen (see the module).
_xla_defaults.apply()
