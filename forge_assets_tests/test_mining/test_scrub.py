"""Secret scrubbing: every planted secret type is redacted and counted; ordinary code is left alone."""

from __future__ import annotations

from collections import Counter

import pytest

from forge_assets.scrub import placeholder, scrub_text

CASES = [
    ("aws_access_key", 'key_id = "AKIAZ7QXKW3M9PLR2TUV"', "AKIAZ7QXKW3M9PLR2TUV"),
    ("github_token", "token: ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi", "ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi"),
    ("openai_key", "client = OpenAI(api_key='sk-proj-Zt7Qw2Xr9Lm4Kp8Nv3Bc6Hd1Fg5Js0YtRe')", "Zt7Qw2Xr9Lm4Kp8Nv3Bc6Hd1Fg5Js0YtRe"),
    ("anthropic_key", "ANTHROPIC = 'sk-ant-api03-Vb7Nm2Qx9Lk4Jh8Gf3Dc6Sa1Zw5Xe0RtYuIoP'", "Vb7Nm2Qx9Lk4Jh8Gf3Dc6Sa1Zw5Xe0RtYuIoP"),
    ("slack_token", "SLACK = 'xoxb-2048-4096-Kd8Jf2Ls9Qw3Er7Ty1Ui4Op6'", "Kd8Jf2Ls9Qw3Er7Ty1Ui4Op6"),
    ("stripe_key", "stripe.api_key = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'", "4eC39HqLyjWDarjtT1zdp7dc"),
    ("google_api_key", "GOOGLE = 'AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI'", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"),
    ("jwt", "auth = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U'",
     "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----",
     "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
    ("url_credentials", 'DB = "postgres://app:pg-Pa55w0rd-42@db.internal:5432/app"', "pg-Pa55w0rd-42"),
    ("connection_string_password", 'CONN = "Server=db;User Id=sa;Password=C0nnStr-P4ss!;"', "C0nnStr-P4ss!"),
    ("password", 'DATABASE_PASSWORD = "Tr0ub4dor&3-horse"', "Tr0ub4dor&3-horse"),
    ("password", "export DB_PASSWORD=s3cr3t-Env-Pa55", "s3cr3t-Env-Pa55"),
    ("password", "  password: hunter2-yaml", "hunter2-yaml"),
    ("secret_assignment", 'api_key = "f3a9c1e7b5d24f6890ab1cd2ef34a5b6"', "f3a9c1e7b5d24f6890ab1cd2ef34a5b6"),
    ("secret_assignment", "aws_secret_access_key = q8Vw/2nXe+RtY7uK1mZp0Lc9HsBdFgJa4WeRtYuI", "q8Vw/2nXe+RtY7uK1mZp0Lc9HsBdFgJa4WeRtYuI"),
]


@pytest.mark.parametrize("kind,text,secret", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_secret_type_is_redacted_and_counted(kind, text, secret):
    out, counts = scrub_text(text)
    assert secret not in out
    assert placeholder(kind) in out
    assert counts[kind] >= 1


def test_detect_secrets_plugins_catch_what_the_patterns_do_not():
    # Twilio and Mailchimp keys have no Forge pattern: detect-secrets' plugins find them.
    text = 'TWILIO_SID = "AC0123456789abcdef0123456789abcdef"\nmc = "0123456789abcdef0123456789abcdef-us12"\n'
    out, counts = scrub_text(text)
    assert "AC0123456789abcdef0123456789abcdef" not in out
    assert "0123456789abcdef0123456789abcdef-us12" not in out
    assert counts["twilio_api_key"] >= 1 and counts["mailchimp_access_key"] >= 1


def test_high_entropy_strings_count_only_next_to_key_names():
    token = "Zk8Qw2Xr9Lm4Kp8Nv3Bc6Hd1Fg5Js0YtRe7Ua2Wq"
    out, counts = scrub_text(f'headers = {{"X-Auth": "{token}"}}\nchecksum = "{token}"\n')
    assert out.count(token) == 1  # the one next to a key-like name is gone, the checksum stays
    assert "checksum" in out and sum(counts.values()) == 1


@pytest.mark.parametrize("code", [
    "token = tokenizer.encode(text)",
    'pad_token = "<pad>"',
    "password = get_password()",
    "if password == expected:\n    pass",
    "def login(user: str, password: str) -> bool:",
    'sha = "a8f5f167f44f4964e6c998dee827110c"',
    'request_id = "123e4567-e89b-12d3-a456-426614174000"',
    "max_tokens = 512",
    'secret_key = os.environ["SECRET_KEY"]',
    'url = "https://example.com/path?page=2"',
])
def test_ordinary_code_is_left_alone(code):
    out, counts = scrub_text(code)
    assert out == code
    assert sum(counts.values()) == 0


def test_scrubbing_is_idempotent_and_keeps_the_signature():
    text = "\n".join(c[1] for c in CASES)
    once, counts = scrub_text(text)
    twice, again = scrub_text(once)
    assert isinstance(counts, Counter) and sum(counts.values()) >= len(CASES)
    assert twice == once and sum(again.values()) == 0
    for _, _, secret in CASES:
        assert secret not in once


def test_empty_and_unicode_text():
    assert scrub_text("") == ("", Counter())
    out, counts = scrub_text("naïve café = 'ok' # ünïcødé\npassword = 'pässwörd-ß'\n")
    assert "pässwörd-ß" not in out and counts["password"] == 1 and "naïve café" in out


def test_a_megabyte_of_secret_free_code_is_left_unchanged():
    code = ('def handler(request, tokenizer, key_states):\n    token = tokenizer(request["text"])\n'
            '    value = key_states[0] * 2  # not a secret\n    return {"token": token, "value": value}\n\n') * 6000
    out, counts = scrub_text(code)  # its speed is measured by bench/scrub.py, not here
    assert out == code and not counts


# Known-prefix tokens: caught at any length once 16 of the vendor's token characters follow the
# prefix (ghp_ + 34 included, which the old 36+ rule missed); one short of that, or an identifier
# that merely starts like a token, stays.
_B62 = "R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWiZq5Vn"  # base62-looking filler, sliced to each length
_LETTERS = "ZaMzQXLvgEtYQzhQFxYwcOkReFqGZxwGbnPsDu"  # Hugging Face tokens are letters only
PREFIXED = [
    ("github_token", "ghp_", _B62[:34]), ("github_token", "ghp_", _B62[:16]), ("github_token", "ghp_", _B62[:36]),
    ("github_token", "gho_", _B62[:16]), ("github_token", "ghu_", _B62[:20]), ("github_token", "ghs_", _B62[:36]),
    ("github_token", "ghr_", _B62[:16]),
    ("github_token", "github_pat_", "11ABCDEFG0" + _B62[:6]),
    ("github_token", "github_pat_", "11ABCDEFG0123456789_" + _B62[:30] + _B62[:29]),
    ("gitlab_token", "glpat-", "xR4-" + _B62[:12]), ("gitlab_token", "glpat-", _B62[:20]),
    ("openai_key", "sk-", _B62[:16]), ("openai_key", "sk-", _B62[:40] + _B62[:8]),
    ("openai_key", "sk-proj-", _B62[:16]), ("openai_key", "sk-proj-", "Zt7Qw2Xr9Lm4Kp8N_v3Bc6Hd1Fg5Js0YtRe-" + _B62),
    ("slack_token", "xoxb-", "2048-4096-" + _B62[:6]), ("slack_token", "xoxa-", _B62[:16]),
    ("slack_token", "xoxp-", "1234-5678-" + _B62[:24]), ("slack_token", "xoxr-", _B62[:16]),
    ("aws_access_key", "AKIA", "Z7QXKW3M9PLR2TUV"), ("aws_access_key", "ASIA", "QWERTYUIOPASDFGH"),
    ("aws_access_key", "AKIA", "Z7QXKW3M9PLR2TUVW"),
    ("huggingface_token", "hf_", _LETTERS[:16]), ("huggingface_token", "hf_", _LETTERS[:34]),
    ("npm_token", "npm_", _B62[:16]), ("npm_token", "npm_", _B62[:36]),
    ("slack_webhook", "https://hooks.slack.com/services/", "T0123ABCD/B4567EFGH/" + _B62[:24]),
    ("slack_webhook", "https://hooks.slack.com/services/", "T0123ABCD/B4567EF"),
    ("slack_webhook", "https://hooks.slack.com/workflows/", "T0123ABCD/A4567EFGH/123/" + _B62[:12]),
]


@pytest.mark.parametrize("kind,prefix,body", PREFIXED, ids=[f"{p}{len(b)}" for _, p, b in PREFIXED])
@pytest.mark.parametrize("context", ['TOKEN = "{}"\n', "export TOKEN={}\n", "curl -H 'Authorization: token {}' ...", "see {}."])
def test_prefixed_tokens_are_redacted_at_every_length_from_16(kind, prefix, body, context):
    token = prefix + body
    out, counts = scrub_text(context.format(token))
    assert token not in out and body[:12] not in out
    assert counts[kind] >= 1 and placeholder(kind) in out


# Slack (10+) and AWS ids have rules of their own; sk-proj- + 15 is still sk- + 20, an OpenAI key.
SHORT = [c for c in PREFIXED if c[0] not in ("slack_token", "slack_webhook", "aws_access_key") and c[1] != "sk-proj-"]


@pytest.mark.parametrize("kind,prefix,body", SHORT, ids=[f"{p}{len(b)}" for _, p, b in SHORT])
def test_fifteen_characters_after_a_prefix_are_not_a_token(kind, prefix, body):
    text = f"see {prefix}{body[:15]}."
    out, counts = scrub_text(text)
    assert counts[kind] == 0


@pytest.mark.parametrize("code", [
    "items = task-list-renderer-component-v2",  # sk- inside a word
    "result = risk-0123456789abcdefghij",
    "from huggingface_hub import hf_hub_download",
    "path = hf_hub_download(repo_id, filename)",
    "cache = os.environ['npm_config_cache']",
    "npm_package_version_1234567890",
    "pip install sk-learn-compatibility-shim-layer",  # words after sk-, no digit or mixed case in a long run
    "hf_transformersmodelcachepath = 1",  # one long lower-case word
    "name = 'ghp_placeholder_token_value_here'",  # underscores cut the run short: ghp_placeholder is 11
    "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # a documentation mask
    "docs: the ghp_ prefix marks a personal access token; sk- marks OpenAI keys",
    "ASIA_PACIFIC_REGION_CODES = ['ap-south-1']",
    "glpat-documentation-example",
    "see https://hooks.slack.com/services/ for setup",
])
def test_identifiers_that_start_like_tokens_are_left_alone(code):
    out, counts = scrub_text(code)
    assert out == code, counts
    assert sum(counts.values()) == 0


@pytest.mark.parametrize("key,value,secret", [
    ("password", "Tr0ub4dor&3xyzzy-plugh", "Tr0ub4dor&3xyzzy-plugh"),
    ("DB_PASSWORD", "hunter2-db", "hunter2-db"),
    ("apiKey", "f3a9c1e7b5d24f6890ab1cd2ef34a5b6", "f3a9c1e7b5d24f6890ab1cd2ef34a5b6"),
    ("Authorization", "Bearer Zk8Qw2Xr9Lm4Kp8Nv3Bc6Hd1", "Zk8Qw2Xr9Lm4Kp8Nv3Bc6Hd1"),
    ("command", "export GITHUB_TOKEN=ghp_" + _B62[:34], "ghp_" + _B62[:34]),
])
def test_a_field_is_judged_with_its_key(key, value, secret):
    from forge_assets.scrub import scrub_field

    out, counts = scrub_field(key, value)
    assert secret not in out and sum(counts.values()) >= 1


@pytest.mark.parametrize("key,value", [
    ("filePath", "/home/dev/app/settings.py"), ("token", "input_ids"), ("max_tokens", "512"), ("bypass", "yes-please"),
    ("password", "${DB_PASSWORD}"), ("auth", "none"), ("description", "rotate the password"),
])
def test_fields_that_are_not_secrets_stay(key, value):
    from forge_assets.scrub import scrub_field

    assert scrub_field(key, value) == (value, Counter())
