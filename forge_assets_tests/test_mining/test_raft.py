"""RAFT samples: an oracle unit among lexically similar distractors, cited by label and quoted, from real parsed code."""

from __future__ import annotations

import dataclasses
import random
import re
import time
from pathlib import Path

import pytest

from forge_assets.chat import EOT
from forge_assets.mining.instruct import UnitText, unit_texts
from forge_assets.mining.raft import RAFT_MAX_DISTRACTORS, RAFT_MIN_DISTRACTORS, TRIM_MARK, raft_samples
from forge_assets.mining.units import parse_file

ROOT = Path(__file__).resolve().parents[2]

CONFIG_PY = '''"""Configuration loading."""


class ConfigError(Exception):
    """A configuration file that cannot be read or parsed."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path


def parse_config(text):
    """Parse configuration text into a dict of config keys and values."""
    config = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        config[key.strip()] = value.strip()
    return config


def load_config(path):
    """Load and parse the config file at path."""
    with open(path) as handle:
        return parse_config(handle.read())


def merge_config(base_config, override_config):
    """Merge two parsed configs; keys of the override config win."""
    merged = dict(base_config)
    merged.update(override_config)
    return merged


def validate_config(config, required_keys):
    """Check that the parsed config has every required config key."""
    missing = [key for key in required_keys if key not in config]
    if missing:
        raise ConfigError("config", f"missing keys {missing}")
    return config
'''

HTTP_PY = '''"""A tiny HTTP client."""


def http_get(url, timeout):
    """Send an HTTP GET request to the url and return the response body."""
    request = build_request("GET", url)
    response = send_request(request, timeout)
    return response.body


def http_post(url, body, timeout):
    """Send an HTTP POST request with a body and return the response body."""
    request = build_request("POST", url, body)
    response = send_request(request, timeout)
    return response.body


def build_request(method, url, body=None):
    headers = {"host": url.split("/")[2]}
    return {"method": method, "url": url, "headers": headers, "body": body}


def send_request(request, timeout):
    connection = open_connection(request["url"], timeout)
    connection.write(request)
    return connection.read_response()


def retry_request(request, attempts, timeout):
    """Send a request, retrying a failed request up to attempts times."""
    for attempt in range(attempts):
        try:
            return send_request(request, timeout)
        except OSError:
            continue
    raise OSError(f"request failed after {attempts} attempts")
'''

# The same merge_config, copied into another file: never a distractor of the original.
LEGACY_PY = '''def merge_config(base_config, override_config):
    """Merge two parsed configs; keys of the override config win."""
    merged = dict(base_config)
    merged.update(override_config)
    return merged
'''

STATS_RS = '''/// Compute the arithmetic mean of the samples.
///
/// An empty slice gives NaN.
pub fn mean(samples: &[f64]) -> f64 {
    let total: f64 = samples.iter().sum();
    total / samples.len() as f64
}

/// Compute the sample variance of the samples around their mean.
pub fn variance(samples: &[f64]) -> f64 {
    let m = mean(samples);
    samples.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / samples.len() as f64
}

/// Compute the standard deviation of the samples.
pub fn std_dev(samples: &[f64]) -> f64 {
    let v = variance(samples);
    v.sqrt()
}

pub fn median(samples: &mut Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

pub fn histogram(samples: &[f64], buckets: usize) -> Vec<usize> {
    let mut counts = vec![0; buckets];
    for x in samples {
        counts[(*x as usize).min(buckets - 1)] += 1;
    }
    counts
}
'''

CONFIG_RS = '''/// Parse a key=value line into its key and value.
pub fn parse_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once('=')?;
    Some((key.trim().to_string(), value.trim().to_string()))
}

/// A parsed configuration: its keys and values.
pub struct Config {
    pub values: Vec<(String, String)>,
}

impl Config {
    /// Parse every line of the text into a config.
    pub fn parse(text: &str) -> Config {
        let values = text.lines().filter_map(parse_line).collect();
        Config { values }
    }
}
'''

TOKEN = "ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi"
DOC = re.compile(r"^\[(\d+)\] (\S[^\n]*?) — (\S+)\n```\w*\n(.*?)\n```$", re.M | re.S)
CITE = re.compile(r"^The answer is in \[(\d+)\] `([^`]+)` \(`([^`]+)`\)")
QUOTE = re.compile(r"##begin_quote##\n(.*?)\n##end_quote##", re.S)


def units_of(files: dict[str, str]) -> list[UnitText]:
    out: list[UnitText] = []
    for path, text in files.items():
        language = "rust" if path.endswith(".rs") else "python"
        out += unit_texts(parse_file(text, language, path), path)
    return out


def python_units() -> list[UnitText]:
    return units_of({"app/config.py": CONFIG_PY, "app/http.py": HTTP_PY, "legacy/config_old.py": LEGACY_PY})


def rust_units() -> list[UnitText]:
    return units_of({"src/stats.rs": STATS_RS, "src/config.rs": CONFIG_RS})


def split(text: str) -> tuple[str, str]:
    """The user and assistant turns of a rendered sample (Forge's own source quotes the chat markers: split at the last)."""
    assert text.endswith(f"<|im_end|>\n{EOT}")
    head, sep, answer = text[: -len(f"<|im_end|>\n{EOT}")].rpartition("<|im_end|>\n<|im_start|>assistant\nThe answer is in [")
    assert sep, text[:300]
    _, sep, user = head.partition("<|im_start|>user\n")
    assert sep
    return user, "The answer is in [" + answer


def documents(user: str) -> list[tuple[int, str, str, str]]:
    """(label, path, name, shown code) of each document in a prompt, in order."""
    return [(int(m[1]), m[2], m[3], m[4]) for m in DOC.finditer(user)]


def check_sample(u: UnitText, source: str, text: str, max_doc_chars: int = 1500) -> tuple[list, int]:
    """The checks every sample must pass; returns its documents and the cited label."""
    user, answer = split(text)
    docs = documents(user)
    assert RAFT_MIN_DISTRACTORS + 1 <= len(docs) <= RAFT_MAX_DISTRACTORS + 1, user
    assert [d[0] for d in docs] == list(range(1, len(docs) + 1))
    cite = CITE.match(answer)
    assert cite, answer[:200]
    label = int(cite[1])
    # The cited label is the oracle's position in the shuffled list, and names it.
    assert (cite[2], cite[3]) == (u.path, u.name)
    assert docs[label - 1][1:3] == (u.path, u.name)
    oracle = docs[label - 1][3]
    if len(u.code) <= max_doc_chars:
        assert oracle == u.code
        assert answer.rstrip().endswith(u.definition + "\n```")
    else:
        assert oracle.endswith("\n" + TRIM_MARK) and u.code.startswith(oracle[: -len(TRIM_MARK) - 1])
    # Exactly one document is the oracle's; no distractor repeats its code or its (path, name).
    others = [d for d in docs if d[0] != label]
    assert all(d[3] != oracle and (d[1], d[2]) != (u.path, u.name) for d in others)
    # Every quote is lines of the oracle's document as shown.
    quotes = QUOTE.findall(answer)
    assert quotes
    assert all(q in oracle for q in quotes), (quotes, oracle)
    assert source in ("doc", "signature", "commit")
    return docs, label


def test_every_sample_has_the_oracle_cited_by_its_label_and_2_to_4_distractors():
    units = python_units() + rust_units()
    out = raft_samples(units, "acme/tools", 50, random.Random(3))
    eligible = [u for u in units if u.kind in ("function", "method", "class")]
    assert len(out) == len(eligible)  # every oracle here has enough distractors
    assert len({(u.path, u.name, u.code) for u, _, _ in out}) == len(out)
    labels, counts = set(), set()
    for u, source, text in out:
        docs, label = check_sample(u, source, text)
        labels.add(label)
        counts.add(len(docs) - 1)
        assert "`acme/tools`" in text
    assert len(labels) >= 3 and counts == {2, 3, 4}  # the oracle moves, the number of distractors varies
    # Documented units come first, and get doc questions (no messages were given).
    sources = [s for _, s, _ in out]
    assert "commit" not in sources
    first_undocumented = next(i for i, (u, _, _) in enumerate(out) if not u.doc)
    assert all(u.doc for u, _, _ in out[:first_undocumented]) and all(not u.doc for u, _, _ in out[first_undocumented:])
    assert set(sources[:first_undocumented]) == {"doc"} and set(sources[first_undocumented:]) == {"signature"}


def test_doc_and_signature_questions():
    out = {u.name: (s, split(t)) for u, s, t in raft_samples(python_units() + rust_units(), "acme/tools", 50, random.Random(1))}
    source, (user, answer) = out["parse_config"]
    assert source == "doc"
    assert "parse configuration text into a dict of config keys and values?" in user
    assert '##begin_quote##\ndef parse_config(text):\n    """Parse configuration text into a dict of config keys and values."""\n' in answer
    assert "Its documentation sums it up: Parse configuration text into a dict of config keys and values." in answer
    # A Rust doc comment is quoted as written (its first paragraph), apart from the signature under its second one.
    source, (user, answer) = out["mean"]
    assert source == "doc" and "compute the arithmetic mean of the samples?" in user
    assert "##begin_quote##\n/// Compute the arithmetic mean of the samples.\n##end_quote##" in answer
    assert "##begin_quote##\npub fn mean(samples: &[f64]) -> f64 {\n##end_quote##" in answer
    # No doc: the question shows the signature, the quote is the signature and the first body lines.
    source, (user, answer) = out["build_request"]
    assert source == "signature"
    assert "`build_request`" in user and "`app/http.py`" in user and "```python\ndef build_request(method, url, body=None):\n```" in user
    assert '##begin_quote##\ndef build_request(method, url, body=None):\n    headers = {"host": url.split("/")[2]}\n' in answer
    assert "As its name says, `build_request` is the function for “build request”." in answer
    source, (user, answer) = out["histogram"]
    assert source == "signature" and "```rust\npub fn histogram(samples: &[f64], buckets: usize) -> Vec<usize>\n```" in user


def test_distractors_share_words_with_the_oracle():
    out = raft_samples(python_units(), "acme/tools", 50, random.Random(0))
    config_names = {"ConfigError", "__init__", "parse_config", "load_config", "merge_config", "validate_config"}
    http_names = {"http_get", "http_post", "build_request", "send_request", "retry_request"}
    for u, _, text in out:
        if u.name == "__init__":
            continue  # two lines of generic words (super, path, reason): nothing to be close to
        names = {d[2] for d in documents(split(text)[0])} - {u.name}
        # The top distractors come from the oracle's own cluster (the 2-unit cluster of merge_config has no more).
        same = config_names if u.name in config_names else http_names
        assert len(names & same) >= min(2, len(names)), (u.name, names)
    by_name = {u.name: documents(split(t)[0]) for u, _, t in out}
    assert all(d[2] in config_names for d in by_name["parse_config"] if d[2] != "parse_config")


def test_distractors_are_lexically_closer_than_random_units_on_forges_own_source():
    files = sorted((ROOT / "forge_assets" / "mining").glob("*.py"))
    units = units_of({str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files})
    assert len(units) > 150

    def words(u: UnitText) -> set[str]:
        return {w.lower() for w in re.findall(r"[A-Z]?[a-z]{3,}", u.code)}

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / max(1, len(a | b))

    by_key = {(u.path, u.name, u.code): u for u in units}
    pick = random.Random(0)
    near, far = [], []
    for u, _, text in raft_samples(units, "forge", 60, random.Random(2)):
        docs = documents(split(text)[0])
        for _, path, name, code in docs:
            if (path, name) == (u.path, u.name):
                continue
            d = next(v for (p, n, c), v in by_key.items() if (p, n) == (path, name) and (c == code or code.endswith(TRIM_MARK)))
            near.append(jaccard(words(u), words(d)))
            far.append(jaccard(words(u), words(pick.choice(units))))
    mean_near, mean_far = sum(near) / len(near), sum(far) / len(far)
    print(f"mean word Jaccard: distractors {mean_near:.3f}, random units {mean_far:.3f}")
    assert mean_near > 1.5 * mean_far


def test_no_oracle_or_distractor_repeats_the_same_code_or_contains_the_oracle():
    out = raft_samples(python_units(), "acme/tools", 50, random.Random(4))
    for u, _, text in out:
        docs = documents(split(text)[0])
        shown = [(p, n) for _, p, n, _ in docs]
        if u.name == "merge_config":  # its copy in legacy/ has the same code
            assert len([s for s in shown if s[1] == "merge_config"]) == 1
        if u.name == "__init__":  # the class that contains the method holds the answer too
            assert ("app/config.py", "ConfigError") not in shown
        if u.name == "ConfigError":
            assert ("app/config.py", "__init__") not in shown


def test_same_inputs_and_seed_give_identical_samples_and_another_seed_differs():
    messages = {"app/config.py": ["Handle a missing equals sign in parse_config", "Add load_config"]}
    a = raft_samples(python_units() + rust_units(), "acme/tools", 30, random.Random(9), messages)
    b = raft_samples(python_units() + rust_units(), "acme/tools", 30, random.Random(9), messages)
    c = raft_samples(python_units() + rust_units(), "acme/tools", 30, random.Random(10), messages)
    assert [(u.path, u.name, s, t) for u, s, t in a] == [(u.path, u.name, s, t) for u, s, t in b]
    assert [t for _, _, t in a] != [t for _, _, t in c]


def test_too_few_units_give_no_samples():
    two = units_of({"app/stats.rs": STATS_RS})[:2]
    assert len(two) == 2 and raft_samples(two, "r", 10, random.Random(0)) == []
    # Three units, two of them the same code: each has fewer than two distractors.
    same = units_of({"app/a.py": LEGACY_PY, "app/b.py": LEGACY_PY, "app/c.py": HTTP_PY.split("def http_post")[0]})
    assert len(same) == 3 and raft_samples(same, "r", 10, random.Random(0)) == []
    assert raft_samples(python_units(), "r", 0, random.Random(0)) == []


def test_commit_subjects_become_questions_about_the_unit_they_name():
    messages = {
        "app/config.py": ["Handle a missing equals sign in parse_config", "wip", "Merge branch 'main' into dev",
                          "Validate required config keys early"],
        "app/http.py": ["Retry a failed request with backoff"],
    }
    units = python_units()
    out = []
    for seed in range(20):
        out += raft_samples(units, "acme/tools", 50, random.Random(seed), messages)
    commits = [(u, split(t)) for u, s, t in out if s == "commit"]
    assert commits
    asked = {}
    for u, (user, answer) in commits:
        subject = re.search(r"“([^”]+)”", user).group(1)
        asked.setdefault(subject, set()).add(u.name)
        assert "in the file that commit touched." in answer.split("\n")[0]
        # The touched file's other units are not shown: the question could not tell them apart.
        assert all(p != u.path for _, p, n, _ in documents(user) if n != u.name)
    assert asked.get("Handle a missing equals sign in parse_config") == {"parse_config"}
    assert asked.get("Validate required config keys early", {"validate_config"}) == {"validate_config"}
    assert asked.get("Retry a failed request with backoff", {"retry_request"}) == {"retry_request"}
    assert not any(s in ("wip", "Merge branch 'main' into dev") for s in asked)
    for u, source, text in out:
        check_sample(u, source, text)


def test_documents_are_trimmed_at_line_boundaries_and_the_oracle_keeps_its_signature():
    long_doc = "\n".join(f"    total += values[{i}] * weights[{i}]  # term {i}" for i in range(60))
    code = f'def weighted_total(values, weights):\n    """Sum the values times their weights."""\n    total = 0\n{long_doc}\n    return total\n'
    units = units_of({"app/weights.py": code, "app/config.py": CONFIG_PY, "app/http.py": HTTP_PY})
    out = raft_samples(units, "acme/tools", 50, random.Random(0), max_doc_chars=200)
    assert out
    for u, source, text in out:
        user, answer = split(text)
        docs, label = check_sample(u, source, text, max_doc_chars=200)
        for i, _, _, shown in docs:
            body = shown[: -len(TRIM_MARK) - 1] if shown.endswith("\n" + TRIM_MARK) else shown
            if i == label:
                assert u.head.split("\n")[0] in body  # the oracle is never cut above its signature
            else:
                assert len(body) <= 200
    weighted = next(t for u, _, t in out if u.name == "weighted_total")
    user, answer = split(weighted)
    assert f"\n{TRIM_MARK}\n```" in answer and "the `…` line marks where the document was cut" in answer
    assert len(answer) < 900


def test_paths_are_scrubbed():
    path = f"deploy/{TOKEN}/config.py"
    units = units_of({path: CONFIG_PY, "app/http.py": HTTP_PY})
    out = raft_samples(units, f"https://user:{TOKEN}@github.com/acme/tools.git", 50, random.Random(0))
    assert any(u.path == path for u, _, _ in out)
    assert all(TOKEN not in t for _, _, t in out)


@pytest.mark.parametrize("n", [5000])
def test_scales_to_thousands_of_units(n):
    base = []
    for p in sorted((ROOT / "forge_assets").rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        base += unit_texts(parse_file(p.read_text(encoding="utf-8"), "python", rel), rel)
    units, copy = [], 0
    while len(units) < n:  # renamed copies in other folders: distinct code, a realistic vocabulary
        for u in base[: n - len(units)]:
            name = f"{u.name}_v{copy}" if copy else u.name
            units.append(dataclasses.replace(u, path=f"v{copy}/{u.path}", name=name, code=u.code.replace(u.name, name),
                                             definition=u.definition.replace(u.name, name), head=u.head.replace(u.name, name)))
        copy += 1
    started = time.perf_counter()
    out = raft_samples(units, "forge", n, random.Random(0))
    print(f"{len(units)} units -> {len(out)} RAFT samples in {time.perf_counter() - started:.2f} s")
    assert len(out) == n
    for u, source, text in out[:: n // 50]:
        check_sample(u, source, text)
