"""jdet: a JAX/Flax trainer for few-shot, reference-based object detection."""

from jdet import _xla_defaults

__version__ = "0.1.0"

# Before any JAX backend starts: XLA:CPU convolutions off YNNPACK (measured faster; see the module).
_xla_defaults.apply()
