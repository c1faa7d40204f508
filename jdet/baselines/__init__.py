"""Training-free baselines to compare jdet with (`python -m jdet.baselines.template`)."""
