"""Forge's assets, one module per pipeline stage, in pipeline order:
snapshots -> sessions -> datasets -> base_model -> adapters -> evals -> export -> deploy."""
