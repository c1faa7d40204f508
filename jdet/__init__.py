"""jdet: a JAX/Flax trainer for few-shot, reference-based object detection.

Importing jdet has no side effects; see docs/design.md §1 for the package layout.
"""

__version__ = "0.1.0"
