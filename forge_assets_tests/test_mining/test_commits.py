"""Git history mining: patches parsed from git log, skip rules, last-touching commits, change samples."""

from __future__ import annotations

import git

from forge_assets.mining import commits as history


def walk(repo_path, language="python", max_count=100, max_diff=400):
    repo = git.Repo(repo_path)
    return list(history.iter_commits(repo, repo.head.commit.hexsha, history.pathspecs(language), max_count, max_diff))


def test_log_is_parsed_into_commits_with_file_changes(repos):
    commits = walk(repos["alpha"])
    messages = [c.message.strip().split("\n")[0] for c in commits]
    assert messages[:2] == ["Add a symlink and a submodule", "Make shout louder"]  # src/dangling.py is a *.py path
    assert messages[-1] == "Initial commit with calc helpers"
    assert [c.time for c in commits] == sorted((c.time for c in commits), reverse=True)
    clamp = next(c for c in commits if c.message.startswith("Clamp values"))
    (change,) = clamp.files
    assert change.path == "src/calc.py" and change.old_blob and change.new_blob
    assert (change.added, change.removed) == (2, 0)
    assert change.diff[0].startswith("@@ ") and any(line == "+        return high" for line in change.diff)
    initial = commits[-1]
    assert {f.path for f in initial.files} == {"src/calc.py"} and initial.files[0].old_blob is None


def test_symlinks_and_submodules_are_marked(repos):
    commits = walk(repos["alpha"], max_count=200)
    special = {f.path: f.special for c in commits for f in c.files if f.special}
    assert special == {"src/dangling.py": "symlink"}


def test_skip_rules():
    make = lambda **kw: history.Commit(**{"sha": "a" * 40, "parents": ["b" * 40], "time": 1, "author": "Ada",
                                          "email": "ada@example.com", "message": "Fix the parser", **kw})
    assert history.skip_reason(make(), 400) is None
    assert history.skip_reason(make(parents=["b" * 40, "c" * 40]), 400) == "merge"
    assert history.skip_reason(make(author="dependabot[bot]"), 400) == "bot_author"
    assert history.skip_reason(make(email="29139614+renovate[bot]@users.noreply.github.com"), 400) == "bot_author"
    assert history.skip_reason(make(files=[history.FileChange("x.py", added=300, removed=200)]), 400) == "huge_diff"
    assert history.skip_reason(make(message="Signed-off-by: Ada <ada@example.com>\n"), 400) == "no_message"
    assert history.clean_message("Fix it\n\nCo-authored-by: Bob <bob@example.com>\n") == "Fix it"


def test_bot_and_huge_commits_are_found_in_the_walk(repos):
    reasons = [history.skip_reason(c, 400) for c in walk(repos["alpha"], max_count=200)]
    assert reasons.count("bot_author") == 1 and reasons.count("huge_diff") >= 1


def test_huge_patches_are_truncated_not_kept(repos):
    commits = walk(repos["alpha"], max_diff=50)
    huge = next(c for c in commits if c.message.startswith("Add a huge generated table"))
    assert huge.truncated and history.skip_reason(huge, 50) == "huge_diff"
    assert all(not f.diff for f in huge.files)


def test_last_touched_finds_each_paths_newest_commit(repos):
    repo = git.Repo(repos["alpha"])
    head = repo.head.commit.hexsha
    found, oldest = history.last_touched(repo, head, history.pathspecs("python"), {"src/text.py", "src/calc.py", "gone.py"})
    newest_text = next(c for c in repo.iter_commits(head, paths="src/text.py"))
    assert found["src/text.py"] == (newest_text.committed_date, newest_text.hexsha)
    assert found["src/calc.py"][0] < found["src/text.py"][0]
    assert "gone.py" not in found and oldest[0] == min(c.committed_date for c in repo.iter_commits(head))


def test_change_samples_show_the_touched_function(repos):
    repo = git.Repo(repos["alpha"])
    commits = walk(repos["alpha"])
    clamp = next(c for c in commits if c.message.startswith("Clamp values"))
    change = clamp.files[0]
    before = history.read_blob_text(repo, change.old_blob).decode()
    after = history.read_blob_text(repo, change.new_blob).decode()
    sample = history.change_sample(clamp, change, before, after, "python")
    assert sample.scope == "function"
    prompt, answer = sample.text.split("<|im_start|>assistant")
    assert "Clamp values above the upper bound too" in prompt and "Make this change to `clamp`" in prompt
    assert "def mean" not in prompt and "if value > high:" not in prompt
    assert "if value > high:\n        return high" in answer and "def mean" not in answer
    created = history.change_sample(commits[-1], commits[-1].files[0], "", after, "python")
    assert created.scope == "new_file" and "Create `src/calc.py`." in created.text
