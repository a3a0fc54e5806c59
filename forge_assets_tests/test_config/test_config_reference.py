"""docs/configuration.md is generated from forge.yaml's models (forge_assets/config_reference.py) and must match them."""

import re
import typing

import pytest
import yaml
from pydantic import BaseModel, Field

from forge_assets import config_reference as ref
from forge_assets.config import ForgeConfig, parse_config


def test_docs_configuration_md_is_what_the_generator_writes():
    want = ref.generate()
    have = ref.DOC_PATH.read_text(encoding="utf-8") if ref.DOC_PATH.is_file() else ""
    assert have == want, (f"{ref.DOC_PATH} differs from what forge_assets/config.py generates (a key, default or description "
                          f"changed). Fix: run `{ref.COMMAND}` and commit docs/configuration.md.")


def test_the_generated_file_says_how_it_is_made():
    head = ref.generate().split("\n## ", 1)[0]
    assert "Generated from forge_assets/config.py by `python -m forge_assets.config_reference --write`; do not edit by hand" in head
    assert "$FORGE_CONFIG" in head and "./forge.yaml" in head and "Unknown keys are rejected" in head


def test_the_printed_reference_is_the_generated_one(capsys):
    assert ref.main([]) == 0
    assert capsys.readouterr().out == ref.generate()


def test_the_minimal_example_in_the_intro_is_a_valid_config():
    blocks = re.findall(r"```yaml\n(.*?)```", ref.INTRO, re.S)
    assert blocks, "the intro has no ```yaml example"
    cfg = parse_config(yaml.safe_load(blocks[0]))
    assert cfg.repos and cfg.languages == ["python"]


def test_every_field_of_every_model_has_a_description():
    models = ref.all_models()
    assert {m.__name__ for m in models} >= {"ForgeConfig", "RepoSource", "SessionSource", "TinyModelConfig", "MiningConfig",
                                            "TrainingConfig", "DeployConfig", "EvalConfig", "HumanEvalConfig", "GatesConfig"}
    missing = ref.missing_descriptions(models)
    assert not missing, (f"fields without a description: {', '.join(missing)}. Fix: give each "
                         f"`Field(..., description=\"...\")` in forge_assets/config.py, then run `{ref.COMMAND}`.")


def test_a_field_without_a_description_is_found_by_name():
    class Nested(BaseModel):
        bare: int = 1
        told: int = Field(1, description="said")

    class Top(BaseModel):
        inner: Nested = Field(default_factory=Nested, description="the nested one")
        blank: str = Field("", description="   ")

    assert ref.missing_descriptions(ref.all_models(Top)) == ["Top.blank", "Nested.bare"]


def test_every_key_is_in_the_reference_with_its_allowed_values():
    text = ref.generate()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    for key, field, _model in ref.documented_fields():
        assert key in rows, f"{key} is missing from the generated reference"
        for arg in _literal_values(field.annotation):
            assert f"`{ref._yaml(arg)}`" in rows[key], f"{key}: allowed value {arg!r} is not listed"
    assert "base_dir" not in rows  # set by load_config, not a key of the file
    assert "`training.learning_rate` | `0.001` | number, > 0 |" in text
    assert "`tiny_model.hidden_size` | `256` | integer, > 0, a multiple of 256 |" in text


def _literal_values(ann) -> list:
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [v for a in typing.get_args(ann) for v in _literal_values(a)]


def test_deprecated_keys_are_named_with_their_replacement():
    old = ref.deprecated_keys()
    assert old == {"deploy.max_perplexity_ratio": "gates.max_perplexity_ratio"}
    section = ref.generate().split("## Deprecated keys", 1)[1]
    for key, new in old.items():
        assert f"| `{key}` | `{new}` |" in section
        ForgeConfig.model_validate({key.split(".")[0]: {key.split(".")[1]: 1.5}})  # still accepted


@pytest.mark.parametrize("model", ref.all_models(), ids=lambda m: m.__name__)
def test_a_description_that_says_deprecated_is_marked_as_such(model):
    for name, field in model.model_fields.items():
        if (field.description or "").lower().startswith("deprecated"):
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            assert extra.get("replaced_by"), (f"{model.__name__}.{name} says it is deprecated but has no "
                                              "json_schema_extra={'replaced_by': '<new key>'}; the reference's Deprecated "
                                              "keys section reads that.")
