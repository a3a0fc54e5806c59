"""forge.yaml validation: defaults, and errors that name the key, the problem and the fix."""

from pathlib import Path

import pytest

from forge_assets.config import ConfigError, load_config, parse_config


def test_defaults_fill_an_almost_empty_file(tmp_path: Path):
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: .\n")
    cfg = load_config(tmp_path / "forge.yaml")
    assert cfg.artifact_root == "data/artifacts"
    assert cfg.artifact_path == (tmp_path / "data/artifacts").resolve()
    assert cfg.base_model == "forge-tiny"
    assert cfg.training.backend == "auto" and cfg.deploy.target == "llama-server" and cfg.deploy.tag_prefix == "forge"
    assert cfg.sessions == [] and cfg.languages is None


def test_the_shipped_forge_yaml_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[2] / "forge.yaml")
    assert [r.path for r in cfg.repos] == ["."]
    assert cfg.base_model == "forge-tiny"


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"learning_rte": 0.1}})
    msg = str(err.value)
    assert "training.learning_rte" in msg and "did you mean `learning_rate`" in msg


def test_bad_value_names_key_value_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"backend": "tpu"}})
    msg = str(err.value)
    assert "training.backend" in msg and "'tpu'" in msg and "Fix:" in msg


def test_hidden_size_must_suit_k_quants():
    with pytest.raises(ConfigError, match="multiple of 256"):
        parse_config({"tiny_model": {"hidden_size": 300}})


def test_repo_needs_exactly_one_of_path_or_url():
    with pytest.raises(ConfigError, match=r"repos\.0.*exactly one of `path`"):
        parse_config({"repos": [{"path": ".", "url": "https://example.invalid/x.git"}]})


def test_missing_file_and_bad_yaml_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "forge.yaml").write_text("repos: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "forge.yaml")


def test_forge_config_env_var_selects_the_file(tmp_path: Path, monkeypatch):
    (tmp_path / "other.yaml").write_text("base_model: ./models/mine\n")
    monkeypatch.setenv("FORGE_CONFIG", str(tmp_path / "other.yaml"))
    assert load_config().base_model == "./models/mine"


def test_training_settings_mean_what_they_say(tmp_path: Path):
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: .\n")
    cfg = load_config(tmp_path / "forge.yaml")
    t = cfg.training
    assert (t.epochs, t.max_steps, t.seq_len, t.train_on) == (1.0, None, 2048, "completions")
    assert cfg.tiny_model.context_length == 2048  # forge-tiny's context follows seq_len
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: .\ntraining: {seq_len: 512}\n")
    assert load_config(tmp_path / "forge.yaml").tiny_model.context_length == 512


def test_seq_len_longer_than_forge_tiny_context_is_a_clear_error(tmp_path: Path):
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: .\ntiny_model: {context_length: 512}\ntraining: {seq_len: 1024}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "forge.yaml")
    text = str(err.value)
    assert "training.seq_len" in text and "1024" in text and "512" in text and "Fix: remove tiny_model.context_length" in text
    (tmp_path / "forge.yaml").write_text("repos:\n  - path: .\ntraining: {train_on: answers}\n")
    with pytest.raises(ConfigError, match="train_on"):
        load_config(tmp_path / "forge.yaml")


def test_gates_and_eval_blocks_and_the_old_perplexity_key():
    cfg = parse_config({})
    assert cfg.gates.max_perplexity_ratio == 1.05 and cfg.gates.fim_not_worse and cfg.gates.max_quantization_loss_pct == 5.0
    assert cfg.eval.fim_cases == 200 and cfg.eval.humaneval.problems == "auto"
    assert parse_config({"deploy": {"max_perplexity_ratio": 2.0}}).gates.max_perplexity_ratio == 2.0  # the old name still works
    with pytest.raises(ConfigError, match="both set.*Fix: keep gates.max_perplexity_ratio"):
        parse_config({"deploy": {"max_perplexity_ratio": 2.0}, "gates": {"max_perplexity_ratio": 1.1}})
    with pytest.raises(ConfigError, match="eval.humaneval.problems.*0 \\(off\\) to 164"):
        parse_config({"eval": {"humaneval": {"problems": 500}}})
    with pytest.raises(ConfigError, match="gates.max_quantizaton_loss_pct.*did you mean `max_quantization_loss_pct`"):
        parse_config({"gates": {"max_quantizaton_loss_pct": 1}})
    assert parse_config({"eval": {"extra_quantizations": ["Q4_K_M"]}}).eval.extra_quantizations == ["Q4_K_M"]


def test_a_config_error_never_quotes_a_urls_credentials(tmp_path: Path):
    (tmp_path / "forge.yaml").write_text('repos:\n  - url: ["https://forge:s3cr3tT0ken@example.com/x.git"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "forge.yaml")
    assert "repos.0.url" in str(err.value) and "https://forge:***@example.com/x.git" in str(err.value)
    assert "s3cr3tT0ken" not in str(err.value)
