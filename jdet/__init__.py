"""jdet: a JAX/Flax trainer for few-shot, reference-based object detection."""

__version__ = "0.1.0"
