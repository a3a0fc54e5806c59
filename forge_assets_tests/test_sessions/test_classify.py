"""Language classification of sessions: a labelled set of realistic sessions, subagents, edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from session_builders import Spec, apply_patch, bash, edit, patch_part, read, text, tool, write, write_db

from forge_assets.config import SessionSource
from forge_assets.sessions import GENERAL, classifications, classify, classify_all, languages_seen, load_sources

P = "/home/dev/project"


def glob(pattern: str, output: str = "") -> dict:
    return tool("glob", {"pattern": pattern}, output)


def grep(pattern: str, include: str | None = None, output: str = "") -> dict:
    return tool("grep", {"pattern": pattern, **({"include": include} if include else {})}, output)


def task(prompt: str, agent: str = "general") -> dict:
    return tool("task", {"description": prompt[:20], "prompt": prompt, "subagent_type": agent}, "Task finished.")


def labelled() -> list[tuple[set[str], Spec]]:
    """(expected languages, session) pairs, mixing languages, multi-language, general, subagents and traps."""
    out: list[tuple[set[str], Spec]] = []

    def add(labels: set[str], spec: Spec) -> Spec:
        out.append((labels, spec))
        return spec

    # --- rust
    add({"rust"}, Spec().turn("fix the borrow error in the cache", read(f"{P}/src/cache.rs"),
                              bash("cargo build", "error[E0502]: cannot borrow `map` as mutable"),
                              edit(f"{P}/src/cache.rs", "let v = map.get(k);", "let v = map.get(k).cloned();"),
                              bash("cargo test", "test result: ok. 12 passed; 0 failed")))
    add({"rust"}, Spec().turn("add a --verbose flag", read(f"{P}/src/main.rs"), read(f"{P}/Cargo.toml"),
                              edit(f"{P}/src/cli.rs"), bash("cargo clippy -- -D warnings", "Finished `dev` profile")))
    # trap: a Rust project whose session runs a Python script once
    add({"rust"}, Spec().turn("speed up the tokenizer", read(f"{P}/src/tokenizer.rs"), edit(f"{P}/src/tokenizer.rs"),
                              edit(f"{P}/src/lib.rs"), bash("cargo bench", "Finished `release` profile"),
                              bash("python3 scripts/plot_bench.py target/criterion", "saved plot.png"),
                              bash("cargo test", "test result: ok. 40 passed")))
    add({"rust"}, Spec().turn("use apply_patch to rename the error type",
                              apply_patch("*** Begin Patch\n*** Update File: src/error.rs\n@@\n-pub enum Error {\n+pub enum ParseError {\n*** Update File: src/lib.rs\n@@\n-use error::Error;\n+use error::ParseError;\n*** End Patch"),
                              bash("cargo check", "Compiling parser v0.3.1\nFinished `dev` profile")))
    add({"rust"}, Spec().turn("why does this panic?", bash("RUST_BACKTRACE=1 cargo run", "thread 'main' panicked at src/main.rs:42:9"),
                              read(f"{P}/src/main.rs"), answer="Index out of bounds at line 42 of `src/main.rs`; see the fix below."))
    # --- python
    add({"python"}, Spec().turn("the API returns 500 on empty body", read(f"{P}/app/api.py"), edit(f"{P}/app/api.py"),
                                bash("uv run pytest -q", "3 passed in 0.41s")))
    add({"python"}, Spec().turn("add type hints to utils", read(f"{P}/src/utils.py"), edit(f"{P}/src/utils.py"),
                                edit(f"{P}/src/io.py"), bash("mypy src", "Success: no issues found in 14 source files")))
    add({"python"}, Spec().turn("write a CSV export", write(f"{P}/forge/export.py", "import csv\n"),
                                write(f"{P}/tests/test_export.py"), bash("pytest tests/test_export.py", "==== 2 passed in 0.12s ====")))
    add({"python"}, Spec().turn("fix the import error", bash("python -m app", "Traceback (most recent call last):\nModuleNotFoundError: No module named 'yaml'"),
                                edit(f"{P}/pyproject.toml", "deps = []", "deps = ['pyyaml']"), bash("uv sync", "Resolved 12 packages")))
    # trap: a Python project whose session installs a Node CLI once
    add({"python"}, Spec().turn("lint the markdown too", bash("npm install -g markdownlint-cli", "added 30 packages"),
                                edit(f"{P}/src/docs.py"), edit(f"{P}/src/build.py"), bash("pytest", "5 passed in 1.02s")))
    add({"python"}, Spec().turn("How do I reverse a list in place?",
                                answer="Use `list.reverse()`:\n\n```python\nitems = [1, 2, 3]\nitems.reverse()\n```"))
    add({"python"}, Spec().turn("refactor the scheduler", glob("**/*.py", "sched/core.py\nsched/jobs.py"),
                                grep("def schedule", "*.py", "sched/core.py:12: def schedule("),
                                edit(f"{P}/sched/core.py"), edit(f"{P}/sched/jobs.py"), bash("python -m pytest", "8 passed in 2.10s")))
    # --- typescript
    add({"typescript"}, Spec().turn("fix the type error in the form", bash("npx tsc --noEmit", "src/Form.tsx(12,5): error TS2322: Type 'string' is not assignable"),
                                    edit(f"{P}/src/Form.tsx"), bash("npm test", "Tests:       14 passed, 14 total")))
    add({"typescript"}, Spec().turn("add a retry helper", write(f"{P}/src/retry.ts"), edit(f"{P}/src/client.ts"),
                                    edit(f"{P}/package.json"), bash("pnpm vitest run", "Test Files  3 passed")))
    # trap: a TypeScript project whose session starts a Python web server once
    add({"typescript"}, Spec().turn("check the static build", bash("pnpm build", "dist/index.js 12kB"),
                                    bash("python3 -m http.server -d dist 8000", "Serving HTTP on 0.0.0.0"),
                                    edit(f"{P}/src/main.ts"), edit(f"{P}/vite.config.ts")))
    add({"typescript"}, Spec().user("migrate the router").assistant(patch_part(f"{P}/src/router.ts", f"{P}/src/routes/home.tsx"), text("Migrated."))
        .assistant(tool("read", {"filePath": f"{P}/tsconfig.json"}, "{}")))
    add({"typescript"}, Spec().turn("deno task failing", bash("deno task test", "error: TS2339 Property 'x' does not exist"),
                                    edit(f"{P}/mod.ts")))
    # --- javascript
    add({"javascript"}, Spec().turn("the express route 404s", read(f"{P}/server.js"), edit(f"{P}/routes/users.js"),
                                    bash("npm test", "Tests:       6 passed, 6 total")))
    add({"javascript"}, Spec().turn("add eslint", edit(f"{P}/package.json"), write(f"{P}/eslint.config.mjs"),
                                    bash("npx eslint .", "✔ no problems"), edit(f"{P}/src/index.js")))
    add({"javascript"}, Spec().turn("debounce the search box", edit(f"{P}/public/app.js"), bash("node --test", "# pass 4")))
    # --- go
    add({"go"}, Spec().turn("the handler leaks goroutines", read(f"{P}/internal/http/handler.go"), edit(f"{P}/internal/http/handler.go"),
                            bash("go test ./...", "ok  \texample.com/svc/internal/http\t0.214s")))
    add({"go"}, Spec().turn("fix the failing test", bash("go test ./pkg/...", "--- FAIL: TestParse (0.00s)\n    parse_test.go:31: got 2 want 3"),
                            edit(f"{P}/pkg/parse.go"), bash("go test ./pkg/...", "--- PASS: TestParse (0.00s)")))
    # trap: a Go project that also touches a shell script once
    add({"go"}, Spec().turn("make the release script build arm64", edit(f"{P}/scripts/release.sh"), edit(f"{P}/cmd/tool/main.go"),
                            edit(f"{P}/internal/build/arch.go"), edit(f"{P}/internal/build/arch_test.go"),
                            bash("go build ./...", ""), bash("go vet ./...", "")))
    add({"go"}, Spec().turn("add a module dependency", bash("go get github.com/spf13/cobra", "go: downloading github.com/spf13/cobra v1.8.0"),
                            edit(f"{P}/go.mod"), write(f"{P}/cmd/root.go")))
    # --- ruby
    add({"ruby"}, Spec().turn("the order mailer fails", read(f"{P}/app/mailers/order_mailer.rb"), edit(f"{P}/app/mailers/order_mailer.rb"),
                              bash("bundle exec rspec spec/mailers", "12 examples, 0 failures")))
    add({"ruby"}, Spec().turn("add a rake task", write(f"{P}/lib/tasks/cleanup.rake"), bash("bin/rails db:migrate", "== migrated")))
    # --- swift
    add({"swift"}, Spec().turn("the view model crashes", read(f"{P}/Sources/App/ViewModel.swift"), edit(f"{P}/Sources/App/ViewModel.swift"),
                               bash("swift build", "Build complete!"), bash("swift test", "Test Suite 'All tests' passed")))
    add({"swift"}, Spec().turn("add a package dependency", edit(f"{P}/Package.swift"), bash("swift package resolve", "Fetching https://github.com/apple/swift-argument-parser")))
    # --- multi-language
    add({"rust", "python"}, Spec().turn("expose the parser to Python", edit(f"{P}/src/lib.rs"), edit(f"{P}/src/py.rs"),
                                        write(f"{P}/python/parser/__init__.py"), write(f"{P}/tests/test_parser.py"),
                                        bash("maturin develop && pytest", "4 passed in 0.33s"), bash("cargo test", "test result: ok. 9 passed")))
    add({"python", "typescript"}, Spec().turn("add a /health endpoint and show it in the UI", edit(f"{P}/backend/app/main.py"),
                                              edit(f"{P}/backend/tests/test_health.py"), bash("cd backend && pytest", "9 passed in 1.20s"),
                                              edit(f"{P}/frontend/src/api.ts"), edit(f"{P}/frontend/src/Health.tsx"), bash("cd frontend && npm run typecheck", "")))
    add({"go", "typescript"}, Spec().turn("wire the Go API into the dashboard", edit(f"{P}/api/server.go"), bash("go test ./api/...", "ok  \tex/api\t0.1s"),
                                          edit(f"{P}/web/src/dashboard.ts"), edit(f"{P}/web/src/types.ts")))
    add({"ruby", "javascript"}, Spec().turn("add a stimulus controller", edit(f"{P}/app/javascript/controllers/search_controller.js"),
                                            edit(f"{P}/app/views/search/index.html.erb"), edit(f"{P}/app/controllers/search_controller.rb"),
                                            bash("bin/rails test", "5 runs, 9 assertions, 0 failures")))
    # --- general: no language signal at all
    add({GENERAL}, Spec().turn("explain what git rebase --onto does",
                               answer="It replays commits onto a new base:\n\n```bash\ngit rebase --onto main feature-a feature-b\n```"))
    add({GENERAL}, Spec().turn("update the README badges", read(f"{P}/README.md"), edit(f"{P}/README.md")))
    add({GENERAL}, Spec().turn("bump the CI runner image", edit(f"{P}/.github/workflows/ci.yml"), edit(f"{P}/Dockerfile"),
                               bash("git commit -am 'ci: bump runner'", "[main 1a2b3c4] ci: bump runner")))
    add({GENERAL}, Spec().turn("write a haiku about code review", answer="Comments bloom like spring"))
    add({GENERAL}, Spec().turn("what time zone is the server in?", bash("date", "Thu Oct  9 10:00:00 UTC 2025")))
    # --- subagents: a parent that only delegates, and children
    parent = add({"go"}, Spec(title="parent").turn("find why the build is slow", task("profile the go build")))
    add({"go"}, Spec(parent_id=parent.id, agent="explore").turn("profile the go build", read(f"{P}/cmd/main.go"),
                                                                  bash("go build -x ./... 2>&1 | tail", "")))
    add({"go"}, Spec(parent_id=parent.id, agent="general").turn("summarise findings", answer="Mostly cgo."))  # no own signal
    parent2 = add({"typescript"}, Spec(title="parent2").turn("review the PR", read(f"{P}/src/app.ts"), edit(f"{P}/src/app.ts"), task("check the docs")))
    add({"typescript"}, Spec(parent_id=parent2.id, agent="explore").turn("check the docs", tool("webfetch", {"url": "https://example.com/docs"}, "<html>")))
    parent3 = add({"rust"}, Spec(title="parent3").turn("port the hashing to Rust", edit(f"{P}/src/hash.rs"), bash("cargo test", "test result: ok."),
                                                       task("port the python tests")))
    add({"rust", "python"}, Spec(parent_id=parent3.id, agent="general").turn("port the python tests", read(f"{P}/tests/test_hash.py"),
                                                                             edit(f"{P}/tests/test_hash.py"), bash("pytest tests", "6 passed in 0.1s")))
    # --- assorted
    add({"python"}, Spec().turn("notebook cleanup", edit(f"{P}/analysis/clean.py"), bash("ruff check --fix .", "Found 3 errors (3 fixed, 0 remaining).")))
    add({"rust"}, Spec().turn("Show me idiomatic error handling", answer="```rust\nfn main() -> anyhow::Result<()> {\n    Ok(())\n}\n```\n\n```rust\nlet x = y?;\n```"))
    add({"javascript"}, Spec().turn("why is `this` undefined here?", answer="Arrow functions:\n\n```js\nconst f = () => this;\n```"))
    add({"go"}, Spec().turn("goroutine leak?", answer="Use a context:\n\n```go\nctx, cancel := context.WithCancel(ctx)\ndefer cancel()\n```"))
    return out


def _micro(expected: list[set[str]], predicted: list[frozenset[str]]) -> tuple[float, float]:
    tp = sum(len(e & p) for e, p in zip(expected, predicted))
    fp = sum(len(p - e) for e, p in zip(expected, predicted))
    fn = sum(len(e - p) for e, p in zip(expected, predicted))
    return tp / (tp + fp), tp / (tp + fn)


def test_labelled_set_precision_and_recall(tmp_path: Path) -> None:
    cases = labelled()
    assert len(cases) >= 40
    db = write_db(tmp_path / "opencode.db", [spec for _, spec in cases], "late")
    result = load_sources([SessionSource(opencode=str(db))], tmp_path)
    assert len(result.sessions) == len(cases)
    got = classifications(result)
    expected = [labels for labels, _ in cases]
    predicted = [got[spec.id].languages for _, spec in cases]
    precision, recall = _micro(expected, predicted)
    misses = [(spec.messages[0].parts[0]["text"][:40], sorted(e), sorted(p)) for (e, spec), p in zip(cases, predicted) if set(p) != e]
    print(f"\nclassification over {len(cases)} sessions: precision={precision:.3f} recall={recall:.3f} misses={misses}")
    assert precision >= 0.9 and recall >= 0.9, misses
    assert languages_seen(result) == {"rust", "python", "typescript", "javascript", "go", "ruby", "swift"}


def test_weights_and_deciding_signal() -> None:
    labels, spec = labelled()[2]  # the Rust session that runs a Python script once
    session = _to_session(spec)
    c = classify(session)
    assert c.languages == {"rust"} and labels == {"rust"}
    assert abs(sum(c.weights.values()) - 1.0) < 1e-9
    assert 0 < c.weights["python"] < 0.2  # the one python3 run is seen but stays under the threshold
    assert c.decided_by == "edit" and c.signals["command"] > 0


def test_no_signal_is_general_and_not_a_language() -> None:
    c = classify(_to_session(Spec().turn("hello", answer="hi")))
    assert c.languages == {GENERAL} and c.decided_by == "none" and c.weights == {GENERAL: 1.0}


def test_subagent_inherits_parent_and_parent_counts_children() -> None:
    parent = Spec(title="p").turn("do it", task("implement in go"))
    child = Spec(parent_id=parent.id).turn("implement in go", edit(f"{P}/main.go"), bash("go test ./...", "ok  \tx\t0.1s"))
    quiet = Spec(parent_id=parent.id).turn("think", answer="ok")
    sessions = [_to_session(s) for s in (parent, child, quiet)]
    alone = classify(sessions[0])
    assert alone.languages == {GENERAL}  # its own messages hold no signal
    together = classify_all(sessions)
    assert together[parent.id].languages == {"go"}
    assert together[child.id].languages == {"go"}
    assert together[quiet.id].languages == {"go"} and together[quiet.id].decided_by == "parent"


def test_child_keeps_its_own_languages_besides_the_parents() -> None:
    parent = Spec().turn("rust work", edit(f"{P}/a.rs"), edit(f"{P}/b.rs"), edit(f"{P}/c.rs"), edit(f"{P}/d.rs"), edit(f"{P}/e.rs"))
    child = Spec(parent_id=parent.id).turn("python helper", edit(f"{P}/x.py"))
    got = classify_all([_to_session(parent), _to_session(child)])
    assert got[parent.id].languages == {"rust"}
    assert got[child.id].languages == {"rust", "python"}


def test_parent_cycle_does_not_hang() -> None:
    a, b = Spec(), Spec()
    a.parent_id, b.parent_id = b.id, a.id
    a.turn("x", edit(f"{P}/a.rs"))
    got = classify_all([_to_session(a), _to_session(b)])
    assert set(got) == {a.id, b.id} and "rust" in got[a.id].languages


@pytest.mark.parametrize(("output", "language"), [
    ("error[E0308]: mismatched types", "rust"), ("src/a.ts(1,1): error TS2322: nope", "typescript"),
    ("==== 3 passed in 0.20s ====", "python"), ("--- FAIL: TestX (0.00s)", "go"), ("3 examples, 1 failure", "ruby"),
])
def test_tool_output_signals(output: str, language: str) -> None:
    c = classify(_to_session(Spec().turn("run it", bash("make check", output))))
    assert c.languages == {language} and c.decided_by == "output"


def test_huge_outputs_are_classified_quickly() -> None:
    import time

    blob = "abc.def-ghi_" * 200_000 + "\nsrc/lib.rs:10: error[E0308]: mismatched types"  # 2.4 MB, no separators
    spec = Spec().turn("build", bash("cargo build", blob), answer="a/" * 100_000)
    started = time.perf_counter()
    c = classify(_to_session(spec))
    assert c.languages == {"rust"}
    assert time.perf_counter() - started < 3.0


def _to_session(spec: Spec):
    """A Session straight from a Spec, through the real v1 normalisation."""
    from forge_assets.sessions.model import Session
    from forge_assets.sessions.opencode import normalise_part, v1_message

    msgs = [v1_message(m.id, m.data, [normalise_part(p, p["id"]) for p in m.parts]) for m in spec.messages]
    return Session(id=spec.id, parent_id=spec.parent_id, title=spec.title, directory=spec.directory, agent=spec.agent,
                   time_created=spec.time, source="memory", messages=msgs)
