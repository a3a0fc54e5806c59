"""docs/configuration.md, generated from forge.yaml's pydantic models (forge_assets/config.py).

Every key's type, default, allowed values, bounds and description come from the models' `model_fields`, so the
reference cannot drift from what the code accepts. `python -m forge_assets.config_reference` prints it; `--write`
rewrites docs/configuration.md (atomically). forge_assets_tests/test_config/test_config_reference.py fails when the
file differs from what this module generates.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from forge_assets.config import DEFAULT_CONFIG, ForgeConfig

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
COMMAND = "python -m forge_assets.config_reference --write"

_SCALARS = {int: "integer", float: "number", str: "text", bool: "`true` or `false`"}
_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"), (annotated_types.Lt, "lt", "<"),
           (annotated_types.Le, "le", "≤"))

INTRO = f"""\
# Configuration reference (`forge.yaml`)

Generated from forge_assets/config.py by `{COMMAND}`; do not edit by hand. To change a key's
documentation, edit its `Field(description=...)` in forge_assets/config.py and rerun that command.

Forge reads one YAML file: `$FORGE_CONFIG` when that environment variable is set, else `./{DEFAULT_CONFIG}` in the
current folder (the Dagster resource `ForgeResource.config_path` can name another). Relative paths in it
(`artifact_root`, `repos[].path`, ...) are resolved from the file's own folder. Every key is optional; a minimal file
trains one language on one local repository:

```yaml
repos:
  - path: .
languages: [python]
```

Unknown keys are rejected, at every level: a misspelt key fails with the key, the problem and the fix (`did you mean
...?`), as does a value of the wrong type or out of its bounds, and a combination of keys that cannot work together
(for example `training.epochs` with `training.max_steps`). Nothing is silently ignored.

`null` (YAML's empty value) is accepted where a key's allowed values say so; its meaning is in the description.
"""


def _bounds(field: FieldInfo) -> list[str]:
    """`> 0`, `≤ 1`, `a multiple of 256`, ... from a field's constraints."""
    out = []
    for meta in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(meta, kind):
                out.append(f"{sign} {getattr(meta, attr)}")
        if isinstance(meta, annotated_types.MultipleOf):
            out.append(f"a multiple of {meta.multiple_of}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length:
            out.append("not empty")
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matching `{pattern}`")
    return out


def _literal(values: tuple) -> str:
    return ", ".join(f"`{_yaml(v)}`" for v in values)


def _type_words(ann: object) -> str:
    """A type annotation in the users' words: `integer`, `list of text`, `` `a`, `b` ``, `a mapping`, ..."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        if base is str and any("language" in getattr(getattr(m, "func", None), "__name__", "") for m in meta):
            return "language name"
        return _type_words(base)
    if origin is typing.Literal:
        values = typing.get_args(ann)
        return _literal(values) if len(values) == 1 else "one of " + _literal(values)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        words = [_type_words(a) for a in args]
        if type(None) in typing.get_args(ann):
            words.append("`null`")
        return " or ".join(words)
    if origin is list:
        (item,) = typing.get_args(ann)
        return f"list of {_type_words(item)}"
    if origin is dict:
        key, value = typing.get_args(ann)
        return f"mapping of {_type_words(key)} to {_type_words(value)}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "mapping"
    if ann in _SCALARS:
        return _SCALARS[ann]
    raise TypeError(f"config_reference: no words for the type {ann!r}; add it to _type_words")


def _yaml(value: object) -> str:
    """A value as forge.yaml writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return "see below" if isinstance(made, BaseModel) else f"`{_yaml(made)}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{_yaml(field.default)}`"


def _allowed(field: FieldInfo) -> str:
    words = _type_words(field.annotation)
    bounds = _bounds(field)
    return words + (", " + ", ".join(bounds) if bounds else "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _nested_model(ann: object) -> type[BaseModel] | None:
    """The model a field holds (directly or as list items), if any."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) is list:
        return _nested_model(typing.get_args(ann)[0])
    if typing.get_origin(ann) is dict:
        return _nested_model(typing.get_args(ann)[1])
    return None


def documented_fields(model: type[BaseModel] = ForgeConfig, prefix: str = "") -> list[tuple[str, FieldInfo, type[BaseModel]]]:
    """Every key forge.yaml can hold: (dotted key, its field, the model it belongs to), depth first. List items are
    `repos[].path`; keys that are not read from the file (`exclude=True`) are left out."""
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        out.append((key, field, model))
        nested = _nested_model(field.annotation)
        if nested is not None:
            origin = typing.get_origin(field.annotation)
            sep = "[]." if origin is list else ".<language>." if origin is dict else "."
            out.extend(documented_fields(nested, key + sep))
    return out


def all_models(model: type[BaseModel] = ForgeConfig) -> list[type[BaseModel]]:
    """ForgeConfig and every model nested in it."""
    found = [model]
    for field in model.model_fields.values():
        nested = _nested_model(field.annotation)
        if nested is not None:
            found.extend(m for m in all_models(nested) if m not in found)
    return found


def missing_descriptions(models: list[type[BaseModel]]) -> list[str]:
    """`Model.field` for every field (keys and internal ones alike) without a non-blank description."""
    return [f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items()
            if not (field.description or "").strip()]


def deprecated_keys() -> dict[str, str]:
    """Old key -> the key that replaces it (fields marked with json_schema_extra={"replaced_by": ...})."""
    out = {}
    for key, field, _model in documented_fields():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("replaced_by"):
            out[key] = str(extra["replaced_by"])
    return out


def _section(title: str, model: type[BaseModel], rows: list[tuple[str, FieldInfo, type[BaseModel]]]) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | default | allowed values | meaning |", "|---|---|---|---|"]
    for key, field, _ in rows:
        nested = _nested_model(field.annotation)
        meaning = field.description or ""
        if nested is not None:
            meaning += f" See [`{key}`](#{_anchor(key)})."
        lines.append(f"| `{key}` | {_default(field)} | {_cell(_allowed(field))} | {_cell(meaning)} |")
    return lines + [""]


def _anchor(key: str) -> str:
    """GitHub's anchor of a `## \\`key\\`` heading."""
    return "".join(c for c in key.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def generate() -> str:
    """The text of docs/configuration.md."""
    fields = documented_fields()
    by_parent: dict[str, list] = {}
    for key, field, model in fields:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        by_parent.setdefault(parent, []).append((key, field, model))
    lines = [INTRO]
    lines += _section("Top-level keys", ForgeConfig, by_parent.pop(""))
    for parent, rows in by_parent.items():
        lines += _section(f"`{parent}`", rows[0][2], rows)
    old = deprecated_keys()
    if old:
        lines += ["## Deprecated keys", "", "Old names, still honoured; each row names the key to use instead (its description says how the two combine).", "",
                  "| old key | use instead |", "|---|---|"]
        lines += [f"| `{k}` | `{v}` |" for k, v in sorted(old.items())]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge_assets.config_reference",
                                     description="Print the forge.yaml reference generated from forge_assets/config.py.")
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC_PATH.relative_to(DOC_PATH.parent.parent)} instead of printing")
    args = parser.parse_args(argv)
    text = generate()
    if args.write:
        from forge_assets.files import atomic_write

        atomic_write(DOC_PATH, text, mode=0o644)
        print(f"wrote {DOC_PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
