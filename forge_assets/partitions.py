"""The one partitioning of Forge: a dynamic partition per programming language.

A partition key becomes a folder (<artifact_root>/<asset>/<language>) and part of a model tag, so every
key Forge adds goes through ``add_languages`` / ``add_languages_request``, which refuse a name that is not
a plain lower-case word (languages.check_language_name): ``../x`` never becomes a partition.
"""

from __future__ import annotations

from typing import Iterable

from dagster import DynamicPartitionsDefinition

from forge_assets.languages import check_language_name

language_partitions = DynamicPartitionsDefinition(name="language")


def check_partition_keys(keys: Iterable[str], where: str) -> list[str]:
    """The keys, each checked as a language name (LanguageNameError, naming `where`, on the first bad one)."""
    return [check_language_name(key, f"{where}: partition key of `{language_partitions.name}`") for key in keys]


def add_languages(instance, keys: Iterable[str], where: str = "forge run") -> list[str]:
    """Add the language partitions the instance does not know yet (every key checked first); the keys added."""
    keys = check_partition_keys(keys, where)
    known = set(instance.get_dynamic_partitions(language_partitions.name))
    new = [key for key in dict.fromkeys(keys) if key not in known]
    if new:
        instance.add_dynamic_partitions(language_partitions.name, new)
    return new


def add_languages_request(keys: Iterable[str], where: str = "git_push_sensor"):
    """A sensor's request to add these language partitions (every key checked first)."""
    return language_partitions.build_add_request(check_partition_keys(keys, where))
