"""Evaluation: held-out perplexity and fill-in-the-middle accuracy, base vs adapter. Imports no Dagster."""
