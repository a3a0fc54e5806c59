"""Markdown documentation as question -> answer samples: ADRs, README and doc sections, noise, caps, skips."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from forge_assets.chat import EOT, parse_rendered
from forge_assets.mining.docs import cap, doc_samples, is_decision_record, split_sections, strip_markdown_noise

REPO = "acme/shop"

NYGARD_ADR = """\
# 2. Use PostgreSQL for order storage

Date: 2024-03-12

## Status

Accepted

## Context

Orders are written by three services and read by the reporting jobs. The current document store cannot
enforce the foreign keys between orders, payments and shipments, and two incidents last quarter came from
orphaned payment rows.

## Decision

We will store orders, payments and shipments in PostgreSQL 16, one schema per service, with foreign keys
enforced by the database. The reporting jobs read from a streaming replica.

## Consequences

Every service needs a migration tool (we use sqitch), and the operations team runs a PostgreSQL cluster
with a replica. Cross-service joins become possible for reporting.
"""

MADR_ADR = """\
---
status: superseded by ADR-0007
date: 2023-11-02
deciders: platform team
---
# Use Markdown Architectural Decision Records

## Context and Problem Statement

We want to record architectural decisions made in this project independent of whether decisions concern
the architecture, the code, or other fields. Which format and structure should these records follow?

## Considered Options

* MADR 3.0.0
* Michael Nygard's template

## Decision Outcome

Chosen option: "MADR 3.0.0", because it is lean, fits our development style and is maintained.
"""

README = """\
---
title: Shop
---
<!-- generated sections below; edit docs/readme.tmpl instead -->
[![CI](https://github.com/acme/shop/actions/workflows/ci.yml/badge.svg)](https://github.com/acme/shop/actions)
![Coverage](https://img.shields.io/codecov/c/github/acme/shop)

# Shop

Shop is the storefront of Acme: a Go service with a Svelte front end that serves the catalogue, the basket
and the checkout, and talks to the payment provider through a queue.

## Table of contents

- [Installation](#installation)
- [Usage](#usage)

## Installation

Shop needs Go 1.22 and Node 20. Clone the repository, install the front-end packages and build both parts
with one command from the repository root:

```bash
# build everything
make build
```

### Linux

On Linux the `make install` target also writes a systemd unit file to `/etc/systemd/system/shop.service`
and reloads systemd, so the service starts after the next boot.

## Usage

Start the server with `./bin/shop serve --port 8080` and open the catalogue in a browser. The basket
is kept in a signed cookie, so the server itself holds no session state between requests.

<!--
## Old usage

This section is commented out and never shown.
-->

## Related projects

- [acme/payments](https://github.com/acme/payments)
- [acme/catalogue](https://github.com/acme/catalogue)

## License

MIT
"""


def turns(chat: str) -> tuple[str, str]:
    assert chat.endswith(EOT)
    messages, _ = parse_rendered(chat[: -len(EOT)])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    return messages[0]["content"], messages[1]["content"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    files = {"docs/adr/0002-use-postgresql.md": NYGARD_ADR, "docs/decisions/0001-use-madr.md": MADR_ADR, "README.md": README}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_nygard_adr_decision_and_consequences(tree):
    path = "docs/adr/0002-use-postgresql.md"
    text = (tree / path).read_text(encoding="utf-8")
    assert is_decision_record(path, text)
    samples = doc_samples(text, path, REPO)
    assert [kind for kind, _ in samples] == ["adr", "adr"]
    user, answer = turns(samples[0][1])
    assert user == "In `acme/shop`, what was decided about Use PostgreSQL for order storage, and why?"
    assert answer.startswith("**Status:** Accepted\n\n**Decision**\n\nWe will store orders, payments and shipments in PostgreSQL 16")
    assert "**Context**\n\nOrders are written by three services" in answer
    assert answer.index("**Decision**") < answer.index("**Context**")
    assert "sqitch" not in answer  # the consequences are their own sample
    user, answer = turns(samples[1][1])
    assert user == "In `acme/shop`, what are the consequences of Use PostgreSQL for order storage?"
    assert answer == ("Every service needs a migration tool (we use sqitch), and the operations team runs a PostgreSQL cluster\n"
                      "with a replica. Cross-service joins become possible for reporting.")


def test_madr_status_from_front_matter_and_no_consequences(tree):
    path = "docs/decisions/0001-use-madr.md"
    text = (tree / path).read_text(encoding="utf-8")
    [(kind, chat)] = doc_samples(text, path, REPO)
    user, answer = turns(chat)
    assert kind == "adr"
    assert user == "In `acme/shop`, what was decided about Use Markdown Architectural Decision Records, and why?"
    assert answer.startswith('**Status:** superseded by ADR-0007\n\n**Decision**\n\nChosen option: "MADR 3.0.0"')
    assert "**Context**\n\nWe want to record architectural decisions" in answer
    assert "deciders" not in answer


def test_is_decision_record_by_path_and_by_headings():
    plain = "# Notes\n\nSome text.\n"
    for path in ("docs/adr/0001-record-decisions.md", "doc/architecture/decisions/0003-use-kafka.md", "decisions/queue.md",
                 "adr/caching.md", "docs/ADR-004-logging.md", "architecture-decisions/x.markdown"):
        assert is_decision_record(path, plain), path
    for path in ("docs/adr/README.md", "docs/guide.md", "src/adr.py", "docs/adr/template.md", "adr/index.md"):
        assert not is_decision_record(path, plain), path
    headed = "# Pick a queue\n\n## Context\n\nWe need one.\n\n## Decision\n\nKafka.\n"
    assert is_decision_record("notes/queue-choice.md", headed)
    assert not is_decision_record("notes/queue-choice.md", "# Pick a queue\n\n## Decision\n\nKafka.\n")  # one heading is not enough
    assert not is_decision_record("notes/queue-choice.txt", headed)
    # Headings inside a code fence do not count.
    fenced = "# Writing ADRs\n\n```markdown\n## Context\n\n## Decision\n```\n"
    assert not is_decision_record("docs/howto.md", fenced)


def test_readme_sections_questions_and_noise(tree):
    text = (tree / "README.md").read_text(encoding="utf-8")
    samples = doc_samples(text, "README.md", REPO)
    assert {kind for kind, _ in samples} == {"readme"}
    qa = dict(turns(chat) for _, chat in samples)
    assert list(qa) == [
        "In `acme/shop`, what is Shop?",
        "In `acme/shop`, how do I install it?",
        "In `acme/shop`, how do I install it (Linux)?",
        "In `acme/shop`, how do I use it?",
    ]  # the table of contents, the link list and the one-word license give nothing
    install = qa["In `acme/shop`, how do I install it?"]
    assert install.startswith("Shop needs Go 1.22 and Node 20.")
    assert "```bash\n# build everything\nmake build\n```" in install  # a '#' line in a fence is no heading; fences are kept
    assert "systemd" not in install  # the subsection is its own pair
    assert "systemd unit file" in qa["In `acme/shop`, how do I install it (Linux)?"]
    usage = qa["In `acme/shop`, how do I use it?"]
    assert usage.startswith("Start the server with `./bin/shop serve --port 8080`")
    assert "Old usage" not in usage and "commented out" not in usage  # HTML comments are stripped
    joined = "\n".join(qa.values())
    for noise in ("badge.svg", "shields.io", "title: Shop", "<!--", "readme.tmpl"):
        assert noise not in joined
    assert doc_samples(text, "README.md", REPO) == samples  # deterministic


def test_other_markdown_names_its_path_and_setext_headings():
    text = """\
Deploying the shop
==================

Deployment
----------

The shop deploys with Helm from the `charts/shop` folder. Every merge to main builds an image, pushes it to
the registry and updates the staging release; production is promoted by hand with `make promote`.

Rollback notes
--------------

Roll back with `helm rollback shop` to the previous revision; the database migrations are backwards
compatible for one release, so a rollback never needs a manual schema change afterwards.
"""
    samples = doc_samples(text, "docs/deploy.md", REPO)
    assert [kind for kind, _ in samples] == ["doc", "doc"]
    users = [turns(chat)[0] for _, chat in samples]
    assert users == ["In `acme/shop`, according to `docs/deploy.md`, how do I deploy it?",
                     "In `acme/shop`, what does `docs/deploy.md` say about Rollback notes?"]
    # A nested README is a "readme" that names its path.
    [(kind, chat)] = doc_samples(text[: text.index("Rollback notes")], "services/shop/README.md", REPO)
    assert kind == "readme" and turns(chat)[0] == "In `acme/shop`, according to `services/shop/README.md`, how do I deploy it?"


def test_answers_are_capped_at_paragraph_boundaries_and_never_leave_a_fence_open():
    paragraphs = [f"Paragraph {i} says something about the build system that takes quite a few words to explain." for i in range(30)]
    text = "# Tool\n\n## Building\n\n" + "\n\n".join(paragraphs) + "\n"
    [(_, chat)] = doc_samples(text, "README.md", REPO, max_answer_chars=400)
    answer = turns(chat)[1]
    assert len(answer) <= 400
    assert answer.endswith("to explain.") and answer.startswith("Paragraph 0 ")
    assert answer == "\n\n".join(paragraphs[: answer.count("Paragraph")])

    code = "```python\n" + "\n".join(f"value_{i} = compute({i})  # step {i}" for i in range(200)) + "\n```"
    capped = cap(code, 500)
    assert len(capped) <= 500 and capped.startswith("```python\n") and capped.endswith("\n```")
    # A blank line inside a fence is no paragraph boundary.
    fenced = "Intro words here.\n\n```\nline one\n\nline two\n```\n\nTail paragraph."
    assert cap(fenced, len(fenced) - 5) == "Intro words here.\n\n```\nline one\n\nline two\n```"
    assert cap(fenced, 30) == "Intro words here."


def test_files_without_usable_sections_give_nothing():
    assert doc_samples("", "README.md", REPO) == []
    assert doc_samples("index.md", "docs/x/README.md", REPO) == []  # a symlink's text
    assert doc_samples("[![CI](https://ci/badge.svg)](https://ci)\n\n# Tool\n\nA tool.\n", "README.md", REPO) == []
    assert doc_samples("# Tool\n\n## Contents\n\n- [A](#a)\n- [B](#b)\n- [C](#c)\n", "README.md", REPO) == []
    # A path-based ADR without a Decision section falls back to its sections.
    index = "# Decisions\n\n## Accepted records\n\n" + "This folder holds every decision the team made about the shop, one file each, " * 2 + "\n"
    assert [k for k, _ in doc_samples(index, "docs/adr/0000-index.md", REPO)] == ["doc"]


def test_splitter_levels_and_cleaning():
    lines = strip_markdown_noise("# T\n\n## 1. **Context**:\n\ntext\n\n### [Link](http://x) part ##\n\n~~~\n# not a heading\n~~~\n").splitlines()
    sections = split_sections(lines)
    assert [(s.level, s.title) for s in sections] == [(1, "T"), (2, "Context"), (3, "Link part")]


def test_repository_name_is_scrubbed():
    token = "ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi"
    repo = f"https://{token}@github.com/acme/shop.git"
    text = "# Tool\n\n## Usage\n\n" + "Run the tool with a config file and it prints the report to standard output for you. " * 2
    [(_, chat)] = doc_samples(text, "README.md", repo)
    assert token not in chat and "github.com/acme/shop.git" in chat


ADR_EXAMPLES = Path("/work/.mirror/joelparkerhenderson+architecture-decision-record/repo")


@pytest.mark.skipif(not ADR_EXAMPLES.is_dir(), reason=f"the real ADR repository mirror {ADR_EXAMPLES} is absent on this machine "
                                                      "(CI has none; the real-repository dataset tests cover it there)")
def test_real_adr_repository():
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ADR_EXAMPLES), *args], capture_output=True, text=True, check=True).stdout

    paths = [p for p in git("ls-tree", "-r", "--name-only", "HEAD").splitlines()
             if p.startswith("locales/en/") and p.endswith("index.md")]
    kinds: dict[str, int] = {}
    for path in paths:
        text = git("show", f"HEAD:{path}")
        clean = strip_markdown_noise(text)
        for kind, chat in doc_samples(text, path, "joelparkerhenderson/architecture-decision-record"):
            kinds[kind] = kinds.get(kind, 0) + 1
            user, answer = turns(chat)
            assert user.startswith("In `joelparkerhenderson/architecture-decision-record`, ") and user.endswith("?")
            assert len(answer) <= 3000
            # Every paragraph of an answer is the file's own text (the ADR labels aside).
            for para in re.split(r"\n\n(?![^`]*```)", answer):
                if not re.fullmatch(r"\*\*(?:Decision|Context|Rationale)\*\*|\*\*Status:\*\* .*", para, re.S):
                    assert para.strip() in clean, (path, para[:120])
    assert kinds.get("adr", 0) >= 30 and kinds.get("doc", 0) >= 30

    path = "locales/en/examples/api-using-json-v-grpc/index.md"
    samples = doc_samples(git("show", f"HEAD:{path}"), path, "joelparkerhenderson/architecture-decision-record")
    [(k1, decided), (k2, consequences)] = samples
    user, answer = turns(decided)
    assert (k1, k2) == ("adr", "adr")
    assert user == "In `joelparkerhenderson/architecture-decision-record`, what was decided about API using JSON v. gRPC, and why?"
    assert answer.startswith("**Status:** Accepted\n\n**Decision**\n\n") and "we have decided to use gRPC" in answer
    assert "**Context**" in answer
    assert turns(consequences)[0].endswith("what are the consequences of API using JSON v. gRPC?")
