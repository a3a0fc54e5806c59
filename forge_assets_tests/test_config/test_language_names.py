"""Language names are checked in one place (languages.check_language_name) and refused at every entry point:
forge.yaml's `languages:`, the CLI's --language, and the partition keys Forge adds. A name becomes a folder
(<artifact_root>/<asset>/<language>), so `../../x` must never get that far."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import SkipReason, build_sensor_context, instance_for_test

from forge_assets import cli
from forge_assets.config import ConfigError, load_config, parse_config
from forge_assets.languages import EXTENSIONS, FENCE_NAMES, FILENAMES, KNOWN, LanguageNameError, check_language_name
from forge_assets.partitions import add_languages, add_languages_request, language_partitions

BAD = ["../../x", "../x", "a/b", "a\\b", ".", "..", "", " ", "py thon", "python\n", "py\x00thon", "Python", "RUST",
       "c++", "c#", "-x", "1c", "a.b", "x" * 33, "ruby:latest", "é"]


def test_every_name_forge_uses_passes():
    names = set(KNOWN) | set(EXTENSIONS.values()) | set(FILENAMES.values()) | set(FENCE_NAMES.values())
    assert {"python", "cpp", "csharp", "c", "shell"} <= names
    for name in sorted(names):
        assert check_language_name(name, "test") == name
    assert check_language_name("objective-c", "test") == "objective-c" and check_language_name("x" * 32, "t")


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_with_where_what_and_the_fix(name):
    with pytest.raises(LanguageNameError) as err:
        check_language_name(name, "somewhere.yaml: key `languages[0]`")
    msg = str(err.value)
    assert msg.startswith("somewhere.yaml: key `languages[0]`: the language name ")
    assert "Fix: write a lower-case name" in msg and "python" in msg


def test_the_message_says_what_is_wrong():
    problem = lambda n: str(pytest.raises(LanguageNameError, check_language_name, n, "w").value)
    assert "is a path" in problem("../../x") and "is a path" in problem("..")
    assert "upper-case" in problem("Python") and "write `python`" in problem("Python")
    assert "Forge calls this language `cpp`" in problem("c++")
    assert "is empty" in problem("") and "control character" in problem("a\x00b")


def test_forge_yaml_with_a_path_as_language_is_refused(tmp_path: Path):
    cfg = tmp_path / "forge.yaml"
    cfg.write_text("languages:\n  - python\n  - ../../x\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{cfg} is not a valid Forge configuration:")
    assert "key `languages.1`: the language name `../../x` is a path" in msg and "Fix: write a lower-case name" in msg
    assert "python" not in msg.split("Fix:")[0]  # the good entry is not blamed
    assert parse_config({"languages": ["python", "cpp", "csharp"]}).languages == ["python", "cpp", "csharp"]


def test_forge_run_with_a_path_as_language_exits_with_the_message_and_no_traceback(tmp_path: Path):
    env = {**os.environ, "FORGE_CONFIG": str(tmp_path / "forge.yaml"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    proc = subprocess.run([sys.executable, "-m", "forge_assets.cli", "run", "--language", "../x"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "argument --language: the language name `../x` is a path" in proc.stderr and "Fix:" in proc.stderr
    assert not (tmp_path / "dagster_home").exists()  # refused before anything was touched


@pytest.mark.parametrize("argv", [["run", "--language", "python", "--language", ".."], ["status", "--language", "a/b"],
                                  ["stop", "--language", "Rust"], ["history", "--language", ""],
                                  ["rollback", "--language", "../../x"], ["client-config", "opencode", "--language", "c#"]])
def test_every_language_option_refuses_a_bad_name(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --language: the language name" in err and "Fix:" in err and "Traceback" not in err


def test_a_bad_language_in_forge_yaml_stops_forge_run_with_the_config_error(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "forge.yaml").write_text("languages: [../../x]\n")
    monkeypatch.setenv("FORGE_CONFIG", str(tmp_path / "forge.yaml"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "key `languages.0`: the language name `../../x` is a path" in err and "Traceback" not in err


def test_partition_keys_are_checked_before_any_is_added():
    with instance_for_test() as instance:
        with pytest.raises(LanguageNameError, match=r"forge run: partition key of `language`: the language name `\.\./x`"):
            add_languages(instance, ["python", "../x"])
        assert instance.get_dynamic_partitions(language_partitions.name) == []  # not even the good one
        assert add_languages(instance, ["python", "rust", "python"]) == ["python", "rust"]
        assert add_languages(instance, ["rust", "go"]) == ["go"]
        assert sorted(instance.get_dynamic_partitions(language_partitions.name)) == ["go", "python", "rust"]
    with pytest.raises(LanguageNameError, match="git_push_sensor: partition key"):
        add_languages_request(["python", "a/b"])
    assert add_languages_request(["python"]).partition_keys == ["python"]


def test_the_sensor_skips_with_the_reason_on_a_bad_configured_language(tmp_path: Path, monkeypatch):
    from forge_assets.definitions import defs
    from forge_assets.sensors import git_push_sensor

    (tmp_path / "forge.yaml").write_text("languages: [python, ../x]\n")
    monkeypatch.setenv("FORGE_CONFIG", str(tmp_path / "forge.yaml"))
    with instance_for_test() as instance:
        result = git_push_sensor(build_sensor_context(instance=instance, cursor=None, definitions=defs))
        assert instance.get_dynamic_partitions(language_partitions.name) == []
    assert isinstance(result, SkipReason) and "the language name `../x` is a path" in result.skip_message


def test_the_artifact_store_refuses_a_partition_key_that_is_a_path(tmp_path):
    """A key added outside Forge's gates (the Dagster UI accepts `../x`) is refused where it would become a path."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.languages import LanguageNameError

    store = ArtifactStore(tmp_path / "artifacts")
    for bad in ("../../x", "a/b", "..", "Python"):
        with pytest.raises(LanguageNameError, match="partition key"):
            store.folder("dataset", bad)
        with pytest.raises(LanguageNameError):
            with store.write("dataset", bad, {}) as out:
                (out.path / "x").write_text("x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "artifacts" / "x").exists()
    assert store.folder("dataset", "python") == tmp_path / "artifacts" / "dataset" / "python"
