"""Training: the base model (forge-tiny or a real one) and LoRA adapters. Imports no Dagster."""
