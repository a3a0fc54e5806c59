"""forge_assets.mining.units on real code: every Swift, Kotlin, Java and YAML file at HEAD of the vendored repositories
(forge_assets_tests/data/real_repos: swift-argument-parser, turbine, javapoet, flux2-kustomize-helm-example) goes
through its tree-sitter grammar, its functions, methods and classes come out with names, and the doc comments the files
have are attached to their units. The bundles' own history is checked too (real authors and dates, linear, small)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

from forge_assets.languages import language_of_path
from forge_assets.mining import units
from forge_assets.mining.units import ParsedFile, ast_status, parse_file
from forge_assets_tests.real_repos import DATA_DIR, REAL_REPOS, clone_real_repo

LANGUAGES = ("swift", "kotlin", "java", "yaml")
# Files of each language at HEAD of each bundle (the bundles are fixed: these change only when one is rebuilt).
FILE_COUNTS = {"swift-argument-parser": {"swift": 79}, "turbine": {"kotlin": 18}, "javapoet": {"java": 25},
               "flux2-kustomize-helm-example": {"yaml": 29}}

# Valid Swift (swift-argument-parser builds with Swift 5.9 to 6.x) that the pinned tree-sitter-swift 0.0.1 cannot read:
# it puts an ERROR or a MISSING node there, so these files are parse_failed. Each file's construct was confirmed by
# rewriting only that construct (e.g. `throws(E)` -> `throws`), after which the file parses without errors.
# When a grammar release reads a construct, the test below names the files to drop from this list.
SWIFT_GRAMMAR_GAPS = {
    "Sources/ArgumentParser/Parsable Types/ParsableCommand.swift": "`#if DEBUG` ... `#endif` inside an extension body",
    "Sources/ArgumentParser/Parsing/CommandParser.swift":
        "typed throws `throws(CommandError)`; property wrappers with an empty argument list, `@Option() var x: String`",
    "Sources/ArgumentParser/Parsing/SplitArguments.swift": "typed throws `throws(ParserError)`",
    "Sources/ArgumentParser/Usage/UsageGenerator.swift": "a continuation line that starts with the operator `< rhs`",
    "Sources/ArgumentParser/Utilities/Mutex.swift": "`#if canImport(os)` / `#elseif` / `#endif` inside a struct body",
    "Sources/ArgumentParserTestHelpers/TestHelpers+SwiftTesting.swift": "the default argument `= #_sourceLocation`",
    "Sources/ArgumentParserTestHelpers/TestHelpers.swift": "the default argument `= #_sourceLocation`",
    "Tests/ArgumentParserUnitTests/CompletionScriptTests.swift": "`@Option() var ...`",
    "Tests/ArgumentParserUnitTests/ErrorMessageTests.swift": "`@Option() var ...`, `@Argument() var ...`",
    "Tests/ArgumentParserUnitTests/HelpGenerationTests+GroupName.swift": "`@OptionGroup() var ...`",
    "Tests/ArgumentParserUnitTests/HelpGenerationTests.swift": "`@Option() var ...`, `@OptionGroup() var ...`",
    "Tests/ArgumentParserUnitTests/ParsableArgumentsValidationTests.swift": "`@Argument() var ...`, `@Option() var ...`",
    "Tests/ArgumentParserUnitTests/SendableTests.swift": "`@Flag() var ...`, `@Option() var ...`, `@Argument() var ...`",
    "Tests/ArgumentParserUnitTests/SplitArgumentTests.swift": "the default argument `= #_sourceLocation`",
    "Tests/ArgumentParserUnitTests/UsageGenerationTests.swift": "`@Option() var ...`",
}
GRAMMAR_GAPS = {"swift-argument-parser": SWIFT_GRAMMAR_GAPS}

# A line that ends a doc comment right above a definition: Swift `///`, Javadoc/KDoc `/** ... */`.
DOC_LINE = re.compile(r"^\s*///|\*/\s*$")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real_repos")
    return {name: clone_real_repo(name, root / name) for name in REAL_REPOS}


@pytest.fixture(scope="module")
def parsed(clones) -> dict[str, dict[str, ParsedFile]]:
    """repository -> path -> its ParsedFile, for every Swift, Kotlin, Java and YAML file at HEAD."""
    out: dict[str, dict[str, ParsedFile]] = {}
    with pytest.MonkeyPatch.context() as mp:
        # units.load_grammar compiles its tree-sitter queries on every call (about 70 ms for Swift, 50 ms for Kotlin:
        # 95% of this parse); one grammar object per language for these 151 files keeps the test at seconds.
        mp.setattr(units, "load_grammar", functools.lru_cache(maxsize=None)(units.load_grammar))
        for name, tree in clones.items():
            out[name] = {}
            for path in _git(tree, "ls-files", "-z").split("\0"):
                language = language_of_path(path)
                if language in LANGUAGES:
                    out[name][path] = parse_file((tree / path).read_text(encoding="utf-8"), language, path)
    return out


def _code_units(pf: ParsedFile):
    return [u for u in pf.units if u.kind != "window"]


def test_the_bundles_are_small_linear_histories_of_real_commits(clones):
    sizes = {name: repo.bundle.stat().st_size for name, repo in REAL_REPOS.items()}
    assert all(size <= 600_000 for size in sizes.values()) and sum(sizes.values()) <= 2_000_000, sizes
    assert sorted(p.name for p in DATA_DIR.glob("*.bundle")) == sorted(f"{n}.bundle" for n in REAL_REPOS)
    for name, tree in clones.items():
        repo = REAL_REPOS[name]
        assert _git(tree, "rev-parse", "HEAD").strip() == repo.head, name
        assert _git(tree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
        log = [line.split("\0") for line in _git(tree, "log", "--format=%H%x00%P%x00%an%x00%aI%x00%s").splitlines()]
        assert len(log) == repo.commits, name
        assert [len(parents.split()) for _, parents, *_ in log] == [1] * (len(log) - 1) + [0]  # linear, one root
        assert len({author for _, _, author, *_ in log}) >= 4, f"{name}: the real authors are kept"
        assert log[-1][3] < log[0][3], f"{name}: the real dates are kept, oldest first commit"
        assert all(subject.strip() for *_, subject in log)
        assert len(_git(tree, "ls-files").splitlines()) == repo.files
        root_files = _git(tree, "ls-tree", "-r", "--name-only", log[-1][0]).splitlines()
        assert any(f.startswith("LICENSE") for f in root_files), f"{name}: the licence travels from the first commit"
        if name != "flux2-kustomize-helm-example":  # the others start mid-history: the first commit is a full tree
            assert len(root_files) >= 0.7 * repo.files, (name, len(root_files))


def test_clone_real_repo_reuses_its_clone_and_refuses_another_folder(clones, tmp_path):
    tree = clones["turbine"]
    (tree / "marker.txt").write_text("kept")
    try:
        assert clone_real_repo("turbine", tree) == tree and (tree / "marker.txt").exists()  # not cloned again
    finally:
        (tree / "marker.txt").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a clone of turbine.bundle"):
        clone_real_repo("turbine", other)
    with pytest.raises(FileExistsError):
        clone_real_repo("javapoet", tree)  # a clone, but of another bundle
    with pytest.raises(KeyError, match="known: "):
        clone_real_repo("no-such-repo", tmp_path / "x")


def test_every_file_parses_through_its_grammar(parsed):
    status = ast_status()
    missing = [lang for lang in LANGUAGES if not status.get(lang)]
    assert not missing, f"no loadable tree-sitter grammar for {missing}. Fix: pip install -e '.[test]' (pyproject pins them)"
    for name, files in parsed.items():
        counts: dict[str, int] = {}
        for pf in files.values():
            counts[pf.language] = counts.get(pf.language, 0) + 1
        assert counts == FILE_COUNTS[name]
        failed = {path for path, pf in files.items() if pf.parse_failed or not pf.has_ast}
        known = set(GRAMMAR_GAPS.get(name, {}))
        assert not failed - known, f"{name}: files that no longer parse with their grammar: {sorted(failed - known)}"
        assert not known - failed, (f"{name}: these files parse now; drop them from GRAMMAR_GAPS: "
                                    f"{sorted(known - failed)}")


def test_functions_methods_and_classes_are_found_with_names(parsed):
    expected = {  # real declarations of each repository, per kind
        "swift-argument-parser": {"class": {"AsyncParsableCommand", "ParsableArguments", "Flag", "Option", "Argument",
                                            "OptionGroup", "CommandConfiguration", "ArgumentSet", "HelpGenerator"},
                                  "method": {"parse", "validate", "helpMessage", "main", "run", "init"}},
        "turbine": {"class": {"ReceiveTurbine", "Turbine", "TurbineAssertionError", "FlowTest", "ChannelTest"},
                    "method": {"awaitItem", "awaitComplete", "awaitError", "cancelAndIgnoreRemainingEvents"},
                    "function": {"test", "testIn", "turbineScope"}},
        "javapoet": {"class": {"JavaFile", "TypeSpec", "MethodSpec", "CodeBlock", "ClassName", "Builder", "Kind"},
                     "method": {"writeTo", "addModifiers", "addStatement", "get", "toBuilder", "build",
                                "nullAnnotationsAddition"}},
    }
    for name, by_kind in expected.items():
        found: dict[str, set[str]] = {}
        for path, pf in parsed[name].items():
            if pf.parse_failed:
                continue
            units = _code_units(pf)
            nameless = [(u.kind, pf.text(u.def_start, u.def_start + 60)) for u in units if not u.name]
            assert not nameless, f"{name} {path}: units without a name: {nameless}"
            if re.match(r"(Sources|src)/", path):
                assert units, f"{name} {path}: no function, method or class found"
            for u in units:
                found.setdefault(u.kind, set()).add(u.name)
                assert u.kind != "method" or u.depth >= 1
        for kind, names in by_kind.items():
            assert names <= found.get(kind, set()), f"{name}: no {kind} named {sorted(names - found.get(kind, set()))}"


def test_doc_comments_are_attached_where_the_files_have_them(parsed):
    documented: dict[str, int] = {}
    for name in ("swift-argument-parser", "turbine", "javapoet"):
        for path, pf in parsed[name].items():
            lines = pf.data.split(b"\n")
            for u in _code_units(pf):
                row = pf.data.count(b"\n", 0, u.def_start)
                above = lines[row - 1].decode("utf-8", "replace") if row else ""
                if DOC_LINE.search(above):
                    assert u.doc, f"{name} {path}:{row + 1}: {u.kind} {u.name} has a doc comment above it, doc is empty"
                    assert u.start < u.def_start, f"{name} {path}:{row + 1}: the unit's span leaves out its doc comment"
                if u.doc:
                    documented[name] = documented.get(name, 0) + 1
                    assert not re.search(r"^\s*(///|/\*\*|\*/)", u.doc, re.MULTILINE), f"{path} {u.name}: {u.doc[:80]!r}"
    # figures of the bundles' HEAD (files the grammar cannot read add none)
    assert documented["swift-argument-parser"] >= 220 and documented["turbine"] >= 44 and documented["javapoet"] >= 104

    def doc(repo: str, path: str, unit: str) -> str:
        return next(u.doc for u in parsed[repo][path].units if u.name == unit and u.doc)

    assert doc("swift-argument-parser", "Sources/ArgumentParser/Parsable Types/ParsableArguments.swift", "parse") \
        .startswith("Parses a new instance of this type from command-line arguments.\n\n- Parameter arguments:")
    assert doc("swift-argument-parser", "Sources/ArgumentParser/Parsable Properties/Flag.swift", "Flag") \
        .startswith("A property wrapper that represents a command-line flag.")
    assert doc("turbine", "src/commonMain/kotlin/app/cash/turbine/ReceiveTurbine.kt", "awaitItem") \
        .startswith("Assert that the next event received was an item and return it.")
    assert doc("turbine", "src/commonMain/kotlin/app/cash/turbine/flow.kt", "test") \
        .startswith("Terminal flow operator that collects events from given flow")
    assert doc("javapoet", "src/main/java/com/squareup/javapoet/JavaFile.java", "JavaFile") \
        == "A Java file containing a single top level class."


def test_yaml_documents_are_units_named_by_their_resource(parsed):
    files = parsed["flux2-kustomize-helm-example"]
    for path, pf in files.items():
        assert pf.has_ast and not pf.parse_failed, path
        for u in _code_units(pf):
            if u.kind == "method":  # a document's top-level key
                assert u.depth == 1 and re.match(r"[\w.-]+:", pf.text(u.def_start, u.end)), (path, pf.text(u.start, u.end))
    names = {path: [u.name for u in pf.units if u.kind == "class"] for path, pf in files.items()}
    assert names["infrastructure/controllers/cert-manager.yaml"] == [
        "Namespace/cert-manager", "OCIRepository/cert-manager", "HelmRelease/cert-manager"]
    assert names["apps/base/podinfo/release.yaml"] == ["HelmRelease/podinfo"]
    assert names["clusters/production/infrastructure.yaml"] == [
        "Kustomization/infra-controllers", "Kustomization/infra-configs"]
    assert names[".fluxschema.yml"] == ["Config"]  # a kind without metadata.name
    assert names["clusters/staging/flux-system/gotk-sync.yaml"] == []  # flux bootstrap's placeholder: a comment
    # every document with a top-level `kind:` is a unit named Kind/metadata.name (Kind alone when it has no name)
    for path, pf in files.items():
        wanted = []
        for document in re.split(r"(?m)^---\s*$", pf.text()):
            kind = re.search(r"(?m)^kind: *([\w.-]+)", document)
            name = re.search(r"(?m)^metadata:\n(?:[ \t]+.*\n)*?  name: *([\w.-]+)", document)
            if kind:
                wanted.append(f"{kind[1]}/{name[1]}" if name else kind[1])
        assert [n for n in names[path] if n] == wanted, path
