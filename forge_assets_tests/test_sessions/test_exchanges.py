"""Per-exchange classification: which language partitions each chat record (one user turn) goes to."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from session_builders import Spec, bash, edit, read, tool, write, write_db

from forge_assets.config import SessionSource
from forge_assets.sessions import GENERAL, classifications, conversations, languages_seen, load_sources
from forge_assets.sessions.classify import INHERITED, Classification, classify_exchange

P = "/home/dev/project"


def load(tmp_path: Path, specs: list[Spec]):
    db = write_db(tmp_path / "opencode.db", specs, "late")
    return load_sources([SessionSource(opencode=str(db))], tmp_path)


def chats(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "chat"]


def mixed_session() -> Spec:
    """Fixes a Rust bug, then writes a Python script, then a turn with no signal of its own."""
    s = Spec(title="mixed")
    s.turn("fix the overflow in the ring buffer", read(f"{P}/src/ring.rs"),
           bash("cargo test", "error[E0308]: mismatched types"),
           edit(f"{P}/src/ring.rs", "let i = a + b;", "let i = a.wrapping_add(b);"),
           bash("cargo test", "test result: ok. 7 passed"), answer="Fixed the overflow.")
    s.turn("now write a script that plots the benchmark CSV", write(f"{P}/scripts/plot.py", "import csv\n"),
           bash("python3 scripts/plot.py bench.csv", "saved plot.png"), answer="Wrote the plot script.")
    s.turn("thanks, now explain what you did", answer="I made the index arithmetic wrap and added a plotting script.")
    return s


def test_mixed_session_records_per_language(tmp_path: Path) -> None:
    spec = mixed_session()
    result = load(tmp_path, [spec])
    assert classifications(result)[spec.id].languages == {"rust", "python"}
    rust, rust_stats = conversations(result, "rust")
    python, python_stats = conversations(result, "python")
    first, second, third = ("fix the overflow in the ring buffer", "now write a script that plots the benchmark CSV",
                            "thanks, now explain what you did")
    assert [c["messages"][0]["content"] for c in chats(rust)] == [first, third]
    assert [c["messages"][0]["content"] for c in chats(python)] == [second, third]
    # Neither exchange leaks into the other's partition, nor do its code changes.
    assert "plot" not in str(chats(rust)[0]) and "ring" not in str(chats(python)[0])
    assert [r["path"] for r in rust if r["kind"] == "code_change"] == [f"{P}/src/ring.rs"]
    assert [r["path"] for r in python if r["kind"] == "code_change"] == [f"{P}/scripts/plot.py"]
    # Weights: the exchange's own, or the session's when inherited; rounded to 3 decimals.
    assert chats(rust)[0]["weights"] == {"rust": 1.0} and chats(python)[0]["weights"] == {"python": 1.0}
    session_weights = {k: round(v, 3) for k, v in classifications(result)[spec.id].weights.items()}
    assert chats(rust)[1]["weights"] == chats(python)[1]["weights"] == session_weights
    assert set(session_weights) == {"rust", "python"} and abs(sum(session_weights.values()) - 1) < 0.01
    for stats in (rust_stats, python_stats):
        assert stats["exchanges_by_own_signal"] == 1 and stats["exchanges_inherited"] == 1
        assert stats["sessions"] == stats["sessions_with_samples"] == 1
        assert stats["samples"] == {"chat": 2, "code_change": 1}


def test_own_signal_wins_over_the_session_labels(tmp_path: Path) -> None:
    """A mostly-Rust session (labelled rust only) with one Python exchange: that exchange goes to python only."""
    s = Spec(title="mostly rust")
    s.turn("speed up the tokenizer", read(f"{P}/src/tokenizer.rs"), edit(f"{P}/src/tokenizer.rs"), edit(f"{P}/src/lib.rs"),
           edit(f"{P}/src/vocab.rs"), bash("cargo bench", "Finished `release` profile"), bash("cargo test", "test result: ok. 40 passed"))
    s.turn("write a python snippet to load the vocab", write(f"{P}/tools/vocab.py"))
    s.turn("what did the benchmark say?", answer="About 30% faster.")
    result = load(tmp_path, [s])
    assert classifications(result)[s.id].languages == {"rust"}
    rust, _ = conversations(result, "rust")
    python, stats = conversations(result, "python")
    assert [c["messages"][0]["content"] for c in chats(rust)] == ["speed up the tokenizer", "what did the benchmark say?"]
    assert [c["messages"][0]["content"] for c in chats(python)] == ["write a python snippet to load the vocab"]
    assert stats["sessions"] == 1 and stats["exchanges_by_own_signal"] == 1 and stats["exchanges_inherited"] == 0
    assert stats["classification"] == {"edit": 1}  # the session's deciding signal


def test_general_sessions_feed_no_language(tmp_path: Path) -> None:
    chat = Spec().turn("explain git rebase --onto", answer="It replays commits.").turn("and cherry-pick?", answer="It copies one.")
    py = Spec().turn("fix it", edit(f"{P}/a.py"))
    result = load(tmp_path, [chat, py])
    assert {r["session"] for r in conversations(result, "python")[0]} == {py.id}
    general, stats = conversations(result, GENERAL)
    assert [c["messages"][0]["content"] for c in chats(general)] == ["explain git rebase --onto", "and cherry-pick?"]
    assert all(c["weights"] == {GENERAL: 1.0} for c in chats(general)) and stats["exchanges_inherited"] == 2


def _session(weights: dict[str, float]) -> Classification:
    from collections import Counter

    return Classification(weights, Counter(), frozenset(weights), "edit")


@pytest.mark.parametrize(("session", "language"), [({"typescript": 1.0}, "typescript"), ({"javascript": 1.0}, "javascript"),
                                                   ({"python": 0.7, "javascript": 0.3}, "javascript")])
def test_npm_only_exchange_follows_the_sessions_choice(session: dict[str, float], language: str) -> None:
    spec = Spec().turn("run the tests", bash("npm test", "Tests:       14 passed, 14 total"))
    msgs = _messages(spec)
    c = classify_exchange(msgs, _session(session))
    assert c.languages == {language} and c.decided_by in ("command", "output") and c.weights == {language: 1.0}


def test_weak_signal_is_inherited() -> None:
    spec = Spec().turn("thanks, now explain", answer="The bug was in `main.rs`.")  # one mention: 0.5 points
    c = classify_exchange(_messages(spec), _session({"go": 0.6, "rust": 0.4}))
    assert c.decided_by == INHERITED and c.languages == {"go", "rust"} and c.weights == {"go": 0.6, "rust": 0.4}
    assert c.signals["mention"] == 0.5  # its own weak signals are still reported


def _messages(spec: Spec):
    """A Spec's messages through the real v1 normalisation."""
    from forge_assets.sessions.opencode import normalise_part, v1_message

    return [v1_message(m.id, m.data, [normalise_part(p, p["id"]) for p in m.parts]) for m in spec.messages]


# --- a labelled set of exchanges ---------------------------------------------------------------

def labelled_exchanges() -> list[tuple[Spec, list[set[str]]]]:
    """Multi-turn sessions, each with the languages a reader would give every one of its turns."""
    out: list[tuple[Spec, list[set[str]]]] = []

    def add(spec: Spec, *labels: set[str]) -> Spec:
        out.append((spec, list(labels)))
        return spec

    add(mixed_session(), {"rust"}, {"python"}, {"rust", "python"})
    add(Spec(title="ts app")
        .turn("add a dark mode toggle", edit(f"{P}/src/theme.ts"), edit(f"{P}/src/Toggle.tsx"), bash("npm run build", ""))
        .turn("run the tests", bash("npm test", "Tests:       14 passed, 14 total"))  # npm only: the session's TypeScript
        .turn("explain what you changed", answer="A toggle that flips the theme class."),
        {"typescript"}, {"typescript"}, {"typescript"})
    add(Spec(title="go service")
        .turn("the handler leaks goroutines", read(f"{P}/internal/http/handler.go"), edit(f"{P}/internal/http/handler.go"),
              bash("go test ./...", "ok  \texample.com/svc/internal/http\t0.214s"))
        .turn("why did it leak?", answer="The goroutine waited on a channel nobody closed.")
        .turn("write a quick python script to hit the endpoint 1000 times", write(f"{P}/tools/load.py", "import urllib\n"),
              bash("python3 tools/load.py", "done")),
        {"go"}, {"go"}, {"python"})  # the explanation inherits both session labels: one expected false positive
    add(Spec(title="python questions")
        .turn("How do I reverse a list in place?", answer="```python\nitems.reverse()\n```")
        .turn("and sort a dict by value?", answer="```python\nsorted(d.items(), key=lambda kv: kv[1])\n```")
        .turn("thanks!", answer="You're welcome."),
        {"python"}, {"python"}, {"python"})
    add(Spec(title="rails")
        .turn("the order mailer fails", read(f"{P}/app/mailers/order_mailer.rb"), edit(f"{P}/app/mailers/order_mailer.rb"),
              bash("bundle exec rspec spec/mailers", "12 examples, 0 failures"))
        .turn("add a stimulus controller for the search box", write(f"{P}/app/javascript/controllers/search_controller.js"),
              edit(f"{P}/app/views/search/index.html.erb"))
        .turn("commit both", bash("git commit -am 'mailer fix, search controller'", "[main 1a2b3c4] mailer fix")),
        {"ruby"}, {"javascript"}, {"ruby", "javascript"})
    add(Spec(title="tokenizer")
        .turn("speed up the tokenizer", read(f"{P}/src/tokenizer.rs"), edit(f"{P}/src/tokenizer.rs"), edit(f"{P}/src/lib.rs"),
              bash("cargo bench", "Finished `release` profile"), bash("python3 scripts/plot_bench.py target/criterion", "saved plot.png"),
              bash("cargo test", "test result: ok. 40 passed"))
        .turn("what does criterion measure exactly?", answer="Wall-clock time per iteration, with outlier detection."),
        {"rust"}, {"rust"})
    parent = add(Spec(title="port")
                 .turn("port the hashing to Rust", edit(f"{P}/src/hash.rs"), bash("cargo test", "test result: ok."),
                       tool("task", {"description": "port tests", "prompt": "port the python tests", "subagent_type": "general"}, "done")),
                 {"rust"})
    add(Spec(parent_id=parent.id, agent="general")
        .turn("port the python tests", read(f"{P}/tests/test_hash.py"), edit(f"{P}/tests/test_hash.py"), bash("pytest tests", "6 passed in 0.1s"))
        .turn("summarise what you ported", answer="Six tests, now calling the Rust extension."),
        {"python"}, {"rust", "python"})
    add(Spec(title="go deps")
        .turn("add a module dependency", bash("go get github.com/spf13/cobra", "go: downloading github.com/spf13/cobra v1.8.0"),
              edit(f"{P}/go.mod"), write(f"{P}/cmd/root.go"))
        .turn("bump the CI runner image", edit(f"{P}/.github/workflows/ci.yml"), edit(f"{P}/Dockerfile")),
        {"go"}, {"go"})
    add(Spec(title="swift")
        .turn("the view model crashes", read(f"{P}/Sources/App/ViewModel.swift"), edit(f"{P}/Sources/App/ViewModel.swift"),
              bash("swift build", "Build complete!"))
        .turn("add a test for it", write(f"{P}/Tests/AppTests/ViewModelTests.swift"), bash("swift test", "Test Suite 'All tests' passed")),
        {"swift"}, {"swift"})
    add(Spec(title="js to ts")
        .turn("the express route 404s", read(f"{P}/server.js"), edit(f"{P}/routes/users.js"), bash("npm test", "Tests:       6 passed, 6 total"))
        .turn("now port users.js to TypeScript", write(f"{P}/routes/users.ts"), bash("npx tsc --noEmit", "")),
        {"javascript"}, {"typescript"})
    add(Spec(title="chat")
        .turn("explain what git rebase --onto does", answer="It replays commits onto a new base.")
        .turn("and cherry-pick?", answer="It copies single commits."),
        set(), set())  # a general session: in no language partition
    return out


def test_labelled_exchanges_precision_and_recall(tmp_path: Path) -> None:
    cases = labelled_exchanges()
    expected: dict[tuple[str, str], set[str]] = {}
    for spec, labels in cases:
        prompts = [m.parts[0]["text"] for m in spec.messages if m.role == "user"]
        assert len(prompts) == len(labels) == len(set(prompts)), spec.title
        expected.update({(spec.id, p): set(l) for p, l in zip(prompts, labels)})
    assert len(expected) >= 20
    result = load(tmp_path, [spec for spec, _ in cases])
    predicted: dict[tuple[str, str], set[str]] = defaultdict(set)
    weights: dict[tuple[str, str], dict[str, float]] = {}
    for language in sorted(languages_seen(result)):
        for c in chats(conversations(result, language)[0]):
            key = (c["session"], c["messages"][0]["content"])
            assert key not in predicted or language not in predicted[key]
            predicted[key].add(language)
            weights[key] = c["weights"]
    assert set(predicted) <= set(expected)
    tp = sum(len(e & predicted[k]) for k, e in expected.items())
    fp = sum(len(predicted[k] - e) for k, e in expected.items())
    fn = sum(len(e - predicted[k]) for k, e in expected.items())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    misses = [(k[1][:40], sorted(e), sorted(predicted[k])) for k, e in expected.items() if predicted[k] != e]
    print(f"\nexchange classification over {len(expected)} exchanges ({len(cases)} sessions): "
          f"precision={precision:.3f} recall={recall:.3f} misses={misses}")
    assert precision >= 0.9 and recall >= 0.9, misses
    for key, w in weights.items():  # every record's weights are normalised and cover its labels
        assert abs(sum(w.values()) - 1.0) < 0.01 and predicted[key] <= set(w), (key, w)
