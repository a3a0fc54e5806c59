"""Mining: repository snapshots and the samples a dataset is made of. Imports no Dagster."""
