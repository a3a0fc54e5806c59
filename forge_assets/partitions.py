"""The one partitioning of Forge: a dynamic partition per programming language."""

from dagster import DynamicPartitionsDefinition

language_partitions = DynamicPartitionsDefinition(name="language")
