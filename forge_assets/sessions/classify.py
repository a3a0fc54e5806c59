"""Which programming languages a session, and each exchange in it, is about: multi-label, weighted,
from what the agent did.

Signals, strongest first: files the agent edited (tool `filePath`, `apply_patch` headers, patch
parts), build and test commands it ran (`cargo`, `pytest`, `go test`, …), what those tools printed
(`error[E0308]`, `TS2322`, `3 passed`, `--- FAIL`, `file.py:12`), files it read or searched,
fenced code blocks in the conversation, and file names mentioned in the text. Each signal adds
points to a language; a session belongs to every language holding at least THRESHOLD of its points.
Shell scripts and project files (Cargo.toml, package.json…) count half: every project has some.
A session with no signal is `general`. A subagent session (parent set) inherits its parent's
labels besides its own; a parent with no signal of its own (it only delegated) is classified by
its subagents' work.

An exchange (one user turn and the assistant steps answering it) is scored by the same code
(`evidence_of` over its messages) and classified by `classify_exchange`: with a decisive signal
of its own (at least MIN_POINTS, and a language holding THRESHOLD of them) it gets the languages
its own weights select, whatever its session's are; with none (e.g. "thanks, now explain") it
inherits its session's weights and labels, and `decided_by` is INHERITED. Evidence that leaves a
family of languages open (FAMILIES: npm-style for TypeScript or JavaScript, gradle for Java or
Kotlin, make for C or C++, a plain .yaml file) in an exchange that shows neither member goes to the
session's choice of them.

Signals per language (commands only count where they stand as a command: the program of a simple
command in a tool's shell command line, after `&&`, `;`, `|`, `$(`, `sudo`, `env X=1`, `timeout 60`…,
not words inside quotes, heredocs or arguments, so `git commit -m "make it a swift php fix"`,
`echo make`, `curl https://php.net/x.php` and prose such as "at the helm" say nothing; the older
patterns for python, rust, go, javascript, typescript and ruby still match a word anywhere in the
command, except inside the arguments of one of the tools below other than make and ninja, so
`kubectl describe node` is no Node.js; installing a tool, `brew install helm`, says nothing):
- swift: `swift build|test|run|package`, `swift x.swift`, `swiftc`, `xcodebuild`, `xcrun`, `swiftlint`,
  `pod install|update…` (also `bundle exec pod install`), `carthage`; output `File.swift:12:5: error:`,
  `Build complete!`, XCTest's `Test Suite '…' passed`, `** BUILD SUCCEEDED **`; Podfile, .pbxproj.
- java: `javac`, `java X.java`; output `File.java:12: error:`, Maven's `File.java:[12,5]`,
  `> Task :compileJava`, `src/main/java/`. java unless Kotlin outweighs it: `mvn`, `./mvnw`, `java -jar`,
  `jar`, pom.xml, build.gradle, Maven's `BUILD SUCCESS`, JUnit/Surefire output (`Tests run: 3,
  Failures: 0`, `org.junit.`), `Exception in thread "main" java.`.
- kotlin: `kotlinc`, `kotlin`, `ktlint`, `detekt`, a gradle command naming a .kt/.kts file; output
  `e: file:///…/File.kt:12:5`, `e: File.kt: (12, 5):`, `> Task :compileKotlin`, `src/main/kotlin/`.
  kotlin unless Java outweighs it: build.gradle.kts, settings.gradle.kts.
- Gradle's ambiguity: `gradle`/`./gradlew` (and Gradle's own output: `> Task :build`, `BUILD SUCCESSFUL
  in 3s`) name the JVM, not a language. They go to java or to kotlin, whichever the rest of the
  session's (an exchange's) evidence shows more of (.java/.kt files, javac/kotlinc output, then what
  leans one way: build.gradle, pom.xml, JUnit output for java, build.gradle.kts for kotlin); for an
  exchange with no such evidence, to its session's choice. A session whose only signal is
  `./gradlew build` is `general`: guessing java or kotlin would put its exchanges into the wrong
  partition as often as not (Android is mostly Kotlin, server code mostly Java). Android keeps Kotlin
  under src/main/java/, so that folder says java only for paths that do not end in .kt.
- c / cpp: `g++`, `c++`, `clang++` (and `x86_64-linux-gnu-g++-13`…) are cpp. `gcc`, `cc`, `clang`,
  `make`, `ninja`, `cmake`, `ctest`, `meson`, `conan`, `clang-tidy` are cpp when the command names a
  C++ file (.cpp/.cc/.cxx/.hpp…) or flag (`-std=c++17`, `-x c++`, `-lstdc++`), c when it names a C file
  (.c/.h) or flag (`-std=c11`); otherwise they go to whichever of c and cpp the rest of the evidence
  shows more of, and on a tie: gcc/cc/clang to c, cmake/ctest/meson/CMakeLists.txt to cpp, make/ninja
  to neither (Makefiles drive Go, Python and docs builds too). A .h file counts for c unless the
  evidence shows more C++. Output: `file.c:10:5: error:` is c, `file.cpp:10:5: error:`, `Building CXX
  object`, "undefined reference to `std::…" cpp; `file.h:3:1: error:` as a .h file.
- csharp: `dotnet`, `msbuild`, `nuget`, `csc`; output `error CS1002:`, `File.cs(12,5): error`,
  `0 Warning(s)  0 Error(s)`, `Passed!  - Failed: 0, Passed: 5`; .csproj/.sln files.
- php: `php` (`php artisan`, `php -l`), `composer`, `phpunit` (`vendor/bin/phpunit`), `phpstan`, `psalm`,
  `php-cs-fixer`, `phpcs`; output `PHP Parse error:`, `PHP Fatal error:`, `… in x.php on line 3`,
  `PHPUnit 10.5`, `No syntax errors detected`; composer.json/.lock, artisan.
- yaml (Kubernetes, Flux, Kustomize, Helm, Argo manifests): `kubectl`, `helm`, `helmfile`, `kustomize`,
  `flux`, `argo`, `argocd`, `kubeconform`, `kubeval`, `kube-linter`, `kube-score`, `yamllint`, `kind
  create|load…`; output `error validating data`, `Error: INSTALLATION FAILED`, `no matches for kind`,
  `deployment.apps/web configured`, `apiVersion: apps/v1` (a manifest printed or read), yamllint's
  `3:1  error  … (indentation)`. A .yaml/.yml file is a manifest (yaml) by its folder (k8s/, manifests/,
  charts/, helm/, overlays/, clusters/, crds/…), its name (kustomization.yaml, Chart.yaml, values*.yaml,
  deployment.yaml, my-ingress.yml…) or, for an edit, an `apiVersion:` or Helm `{{ .Values` in what was
  written; tool configuration (anything under a dot folder such as .github/, dot files, compose files,
  mkdocs.yml, pnpm-lock.yaml, Spring's application.yml…) never is; any other .yaml file counts for yaml
  only when the session (exchange) shows manifests otherwise. A ```yaml fenced block counts only when
  it holds a manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from forge_assets.languages import EXTENSIONS, language_of_fence, language_of_path

from .model import LoadResult, Message, Session
from .patches import patch_files

GENERAL = "general"
INHERITED = "session"  # decided_by of an exchange without a decisive signal of its own
THRESHOLD = 0.2  # share of a session's points a language needs to be one of its labels
MIN_POINTS = 1.0  # fewer points than this in total and the session is `general`

# Evidence that names a family of languages without saying which: resolved per session (and per exchange, with its
# session's choice on a tie) to the member the rest of the evidence shows most; on a tie to the family's default,
# or dropped where it has none (see FAMILIES and the module docstring).
_JS = "javascript|typescript"  # npm & co.: typescript or javascript, javascript on a tie
_JVM = "java|kotlin"  # gradle and its output: neither on a tie
_JAVA_FIRST = "java|kotlin>java"  # mvn, java -jar, JUnit/Maven output, pom.xml, build.gradle
_KOTLIN_FIRST = "java|kotlin>kotlin"  # build.gradle.kts, settings.gradle.kts
_C_OR_CPP = "c|cpp"  # make, ninja, the linker: neither on a tie
_C_FIRST = "c|cpp>c"  # gcc, cc, clang naming no source file; .h headers
_CPP_FIRST = "c|cpp>cpp"  # cmake, ctest, meson, CMakeLists.txt
_YAML_IF_SEEN = "yaml?"  # a .yaml file that is neither a manifest nor tool configuration
FAMILIES: dict[str, tuple[tuple[str, ...], str | None]] = {
    _JS: (("typescript", "javascript"), "javascript"),
    _JVM: (("java", "kotlin"), None), _JAVA_FIRST: (("java", "kotlin"), "java"), _KOTLIN_FIRST: (("java", "kotlin"), "kotlin"),
    _C_OR_CPP: (("c", "cpp"), None), _C_FIRST: (("c", "cpp"), "c"), _CPP_FIRST: (("c", "cpp"), "cpp"),
    _YAML_IF_SEEN: (("yaml",), None),
}

POINTS: dict[str, float] = {
    "edit": 3.0, "command": 1.5, "output": 1.5, "read": 1.0, "patch": 1.0, "fence": 1.0, "mention": 0.5,
}
EDIT_TOOLS = frozenset({"edit", "write", "multiedit", "apply_patch", "patch", "notebookedit"})
# Fenced blocks of shell are how agents show any command; they say nothing about the project.
_FENCE_SKIP = frozenset({"shell"})

# Files that name a project's language without being written in it (weighted half).
PROJECT_FILES: dict[str, str] = {
    "Cargo.toml": "rust", "Cargo.lock": "rust", "rust-toolchain.toml": "rust",
    "pyproject.toml": "python", "requirements.txt": "python", "setup.cfg": "python", "Pipfile": "python",
    "uv.lock": "python", "poetry.lock": "python", "tox.ini": "python", "pytest.ini": "python",
    "package.json": _JS, "package-lock.json": _JS, "pnpm-lock.yaml": _JS, "yarn.lock": _JS, "bun.lock": _JS, "bun.lockb": _JS,
    "tsconfig.json": "typescript", "go.mod": "go", "go.sum": "go", "Gemfile.lock": "ruby", ".rubocop.yml": "ruby",
    "pom.xml": _JAVA_FIRST, "build.gradle": _JAVA_FIRST, "settings.gradle": _JAVA_FIRST,
    "build.gradle.kts": _KOTLIN_FIRST, "settings.gradle.kts": _KOTLIN_FIRST, "gradle.properties": _JVM,
    "CMakeLists.txt": _CPP_FIRST, "meson.build": _CPP_FIRST, "conanfile.txt": "cpp", "vcpkg.json": "cpp",
    "composer.json": "php", "composer.lock": "php", "artisan": "php", "phpunit.xml": "php", "phpunit.xml.dist": "php",
    "Podfile": "swift", "Podfile.lock": "swift", "Cartfile": "swift", "Package.resolved": "swift",
    "Directory.Build.props": "csharp", "Directory.Packages.props": "csharp",
}
_PROJECT_SUFFIXES: dict[str, str] = {
    ".gemspec": "ruby", ".csproj": "csharp", ".sln": "csharp", ".pbxproj": "swift", ".xcconfig": "swift",
}

# The older languages' commands: a word anywhere in the command line (unchanged; see the module docstring).
_COMMANDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:cargo|rustc|rustup|rustfmt|clippy-driver)\b"), "rust"),
    (re.compile(r"\b(?:tsc|ts-node|tsx|deno)\b"), "typescript"),
    (re.compile(r"(?<![\w-])(?:npm|pnpm|yarn|npx|bun|bunx|node|vitest|jest|eslint|prettier|vite)(?![\w-])"), _JS),
    (re.compile(r"(?<![\w-])(?:pip3?|uv|uvx|pytest|python3?(?:\.\d+)?|poetry|ruff|mypy|tox|pipx|conda|black|pyright)(?![\w-])"), "python"),
    (re.compile(r"\bgo\s+(?:build|test|run|mod|vet|get|install|generate|fmt|work)\b|\b(?:gofmt|golangci-lint|gopls)\b"), "go"),
    (re.compile(r"(?<![\w-])(?:bundle|rails|rake|rspec|gem|irb|rubocop|ruby)(?![\w-])"), "ruby"),
]

# Programs of the other languages, matched only as the program of a simple command (see _program_language).
_SWIFT_TOOLS = frozenset({"swiftc", "xcodebuild", "xcrun", "swiftlint", "swift-format", "swiftformat", "carthage", "xcodegen"})
_SWIFT_SUBCOMMANDS = frozenset({"build", "test", "run", "package"})
_POD_SUBCOMMANDS = frozenset({"install", "update", "init", "outdated", "deintegrate", "lib", "spec", "repo", "trunk"})
_JAVA_TOOLS = frozenset({"javac", "jshell"})
_JAVA_FIRST_TOOLS = frozenset({"mvn", "mvnw", "mvnd", "jar"})
_KOTLIN_TOOLS = frozenset({"kotlinc", "kotlinc-jvm", "kotlin", "ktlint", "detekt"})
_CPP_COMPILER = re.compile(r"(?:[\w.+-]+-)?(?:g\+\+|c\+\+|clang\+\+)(?:-\d[\d.]*)?")
_C_COMPILER = re.compile(r"(?:[\w.+-]+-)?(?:gcc|cc|clang)(?:-\d[\d.]*)?")
_BUILD_RUNNERS = frozenset({"make", "gmake", "mingw32-make", "nmake", "ninja"})  # run any recipe: C or C++ only with evidence
_CPP_FIRST_TOOLS = frozenset({"cmake", "ctest", "meson", "conan", "vcpkg", "clang-tidy", "cppcheck"})
_CPP_FLAG = re.compile(r"-std=(?:c|gnu)\+\+\w*|-lstdc\+\+|-stdlib=\S+|-xc\+\+")
_C_FLAG = re.compile(r"-std=(?:c|gnu)\d[\dx]|-xc")
_CSHARP_TOOLS = frozenset({"dotnet", "msbuild", "nuget", "csc", "xbuild"})
_PHP_TOOLS = frozenset({"php", "composer", "phpunit", "phpstan", "psalm", "php-cs-fixer", "phpcs", "phpcbf", "artisan"})
_YAML_TOOLS = frozenset({"kubectl", "helm", "helmfile", "kustomize", "flux", "argo", "argocd", "kubeconform", "kubeval",
                         "kube-linter", "kube-score", "yamllint"})
_KIND_SUBCOMMANDS = frozenset({"create", "delete", "load", "get", "export", "build"})
# Words before the program that are not it: `sudo`, `env X=1`, `timeout 60`, `xargs -n1`, shell keywords.
_WRAPPERS = frozenset({"sudo", "doas", "env", "time", "nohup", "exec", "command", "builtin", "nice", "ionice", "timeout",
                       "xargs", "watch", "stdbuf", "ccache", "sccache", "caffeinate", "unbuffer", "then", "do", "else",
                       "elif", "if", "while", "until", "!", "{"})
_WRAPPER_OPTION_ARGS = frozenset({"-u", "-g", "-n", "-I", "-L", "-P", "-s", "-k", "-d"})
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
_DURATION = re.compile(r"\d+(?:\.\d+)?[smhd]?")
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh"})
_JVM_DIR = re.compile(r"\bsrc/(?:main|test)/(java|kotlin)\b(?![\w/.-]*\.kts?\b)")  # Android keeps Kotlin under java/ too

_OUTPUTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"error\[E\d{4}\]|^\s*Compiling \S+ v\d|test result: (?:ok|FAILED)\.|Finished `?(?:dev|test|release)|panicked at ", re.M), "rust"),
    (re.compile(r"\bTS\d{4}\b"), "typescript"),
    (re.compile(r"Traceback \(most recent call last\)|=+ test session starts =+|\b\d+ (?:passed|failed)(?:, \d+ \w+)* in [\d.]+s\b|ModuleNotFoundError"), "python"),
    (re.compile(r"^--- (?:FAIL|PASS):|^(?:ok|FAIL)\s+\S+\s+[\d.]+s$|^go: downloading|^panic: ", re.M), "go"),
    (re.compile(r"npm ERR!|npm error|\bTests:\s+\d+ (?:passed|failed)|node_modules/"), _JS),
    (re.compile(r"\b\d+ examples?, \d+ failures?|\.rb:\d+:in "), "ruby"),
    (re.compile(r"\.swift:\d+:\d+: (?:error|warning)|Build complete!|Test Suite '.*' (?:passed|failed)|\*\* (?:BUILD|TEST|ARCHIVE) (?:SUCCEEDED|FAILED) \*\*"
                r"|Executed \d+ tests?, with \d+ failures?|Test Case '-\["), "swift"),
    (re.compile(r"\.java:\d+: (?:error|warning):|\.java:\[\d+,\d+\]|Compilation failed; see the compiler error output|> Task :\S*compile\w*Java\b"
                r"|\bsrc/(?:main|test)/java/(?![\w/.-]*\.kts?\b)"), "java"),
    (re.compile(r"\[INFO\] BUILD (?:SUCCESS|FAILURE)|Tests run: \d+, Failures: \d+|\bOK \(\d+ tests?\)|JUnit Jupiter|\borg\.junit\.|\borg\.opentest4j\."
                r"|Exception in thread \"[^\"\n]*\" java\.|\[\s*\d+ tests (?:successful|failed)\s*\]"), _JAVA_FIRST),
    (re.compile(r"^[ew]: (?:file://)?\S+\.kts?(?::\d+:\d+|:\s?\(\d+,\s?\d+\))|> Task :\S*compile\w*Kotlin\b|\bsrc/(?:main|test)/kotlin/", re.M), "kotlin"),
    (re.compile(r"^> Task :|\bBUILD (?:SUCCESSFUL|FAILED) in \d|\b\d+ tests? completed, \d+ failed", re.M), _JVM),
    (re.compile(r"\.c:\d+(?::\d+)?: (?:fatal )?(?:error|warning|note)\b|\bBuilding C object\b|\bCompiling C object\b"
                r"|^[ \t]*(?:[\w./+-]*[/-])?(?:gcc|cc|clang)(?:-\d[\d.]*)?[ \t][^\n]*?\.c(?![\w+])", re.M), "c"),
    (re.compile(r"\.(?:cc|cpp|cxx|c\+\+|hpp|hh|hxx|ipp|tpp):\d+(?::\d+)?: (?:fatal )?(?:error|warning|note)\b|\bBuilding CXX object\b"
                r"|\bCompiling C\+\+ object\b|undefined reference to `std::|terminate called after throwing an instance of 'std::"
                r"|^[ \t]*(?:[\w./+-]*[/-])?(?:g\+\+|c\+\+|clang\+\+)(?:-\d[\d.]*)?[ \t]", re.M), "cpp"),
    (re.compile(r"\.h:\d+(?::\d+)?: (?:fatal )?(?:error|warning|note)\b"), _C_FIRST),
    (re.compile(r"collect2: error: ld returned|undefined reference to `"), _C_OR_CPP),
    (re.compile(r"\d+% tests passed, \d+ tests? failed out of \d+|^-- Build files have been written to|^-- Configuring done", re.M), _CPP_FIRST),
    (re.compile(r"\b(?:error|warning) CS\d{4}\b|\.cs\(\d+,\d+\): (?:error|warning)|\d+ Warning\(s\)\s+\d+ Error\(s\)"
                r"|(?:Passed|Failed)!\s+-\s+Failed:\s+\d+, Passed:\s+\d+"), "csharp"),
    (re.compile(r"PHP (?:Parse|Fatal) error:|PHP Warning:|\bParse error: [^\n]* on line \d+|\.php on line \d+|PHPUnit \d+\.\d+"
                r"|No syntax errors detected in|Generating (?:optimized )?autoload files|Loading composer repositories"), "php"),
    (re.compile(r"error validating data|Error: (?:INSTALLATION|UPGRADE) FAILED|error converting YAML to JSON|error: unable to recognize"
                r"|no matches for kind \"|Error from server \(|Error: accumulating resources|reconciliation (?:completed|failed)"
                r"|Summary: \d+ resources? found in \d+ files?|\d+ chart\(s\) linted"
                r"|^[a-z][\w.-]*/[\w.-]+ (?:created|configured|unchanged|deleted|serverside-applied)(?: \([\w ]+\))?$"
                r"|^[ \t]*(?:\d+[|\u2192:\t] ?)?(?:- +)?apiVersion: *['\"]?[\w./-]+|^[ \t]+\d+:\d+[ \t]+(?:error|warning)[ \t]+[^\n]+\([\w-]+\)$", re.M), "yaml"),
]

# .yaml/.yml files: Kubernetes-style manifests are the yaml language; CI, compose and tools' own configuration are not.
_YAML_SUFFIXES = (".yaml", ".yml")
_MANIFEST_DIRS = frozenset({"k8s", "kubernetes", "kube", "manifests", "deploy", "deployments", "charts", "helm", "kustomize",
                            "overlays", "clusters", "flux", "flux-system", "argocd", "argo", "gitops", "crds", "crd", "rbac", "helmfile.d"})
_MANIFEST_NAMES = frozenset({"kustomization", "chart", "helmfile", "skaffold"})
_MANIFEST_WORDS = frozenset({"k8s", "kube", "kubernetes", "manifest", "manifests", "deployment", "statefulset", "daemonset", "cronjob",
                             "service", "svc", "ingress", "configmap", "secret", "sealedsecret", "namespace", "pvc", "hpa", "pdb",
                             "networkpolicy", "serviceaccount", "clusterrole", "clusterrolebinding", "rolebinding", "helmrelease",
                             "helmrepository", "gitrepository", "ocirepository", "kustomization", "crd", "argocd", "applicationset", "rollout"})
_CONFIG_YAML = re.compile(r"(?:docker-)?compose(?:[-.][\w.-]+)?|mkdocs|codecov|dependabot|environment|pubspec|pnpm-lock|pnpm-workspace"
                          r"|azure-pipelines|bitbucket-pipelines|appveyor|action|serverless|(?:openapi|swagger)(?:[-.][\w.-]+)?"
                          r"|application(?:[-.][\w.-]+)?|bootstrap|meta|cloudbuild|buildspec|app|_config|playbook|inventory|galaxy"
                          r"|renovate|lefthook|crowdin|gitlab-ci|goreleaser|golangci|readthedocs|travis|citation")
_MANIFEST_TEXT = re.compile(r"^[ \t]*(?:- +)?apiVersion: *['\"]?[\w./-]+|\{\{-? *(?:\.Values|\.Release|\.Chart|include |template )", re.M)

_EXT_ALT = "|".join(sorted({re.escape(e[1:]) for e in (*EXTENSIONS, *_YAML_SUFFIXES)}, key=len, reverse=True))
_PATH_IN_TEXT = re.compile(rf"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_EXT_ALT}))(?![\w])")
_PATH_WITH_LINE = re.compile(rf"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_EXT_ALT})):\d+")
_SCAN_CHARS = 20_000  # a huge tool output is scanned at its head and tail only, keeping classification linear and fast
_FENCE = re.compile(r"^\s*(?:```+|~~~+)[ \t]*([^\s`~]+)", re.M)
_FENCE_CLOSE = re.compile(r"^\s*(?:```|~~~)", re.M)


@dataclass
class Evidence:
    """Points per language, split by the kind of signal that gave them."""

    points: dict[str, Counter] = field(default_factory=dict)  # kind → Counter(language → points)

    def add(self, kind: str, language: str | None, scale: float = 1.0) -> None:
        if language:
            self.points.setdefault(kind, Counter())[language] += POINTS[kind] * scale

    def __iadd__(self, other: "Evidence") -> "Evidence":
        for kind, counts in other.points.items():
            self.points.setdefault(kind, Counter()).update(counts)
        return self

    def totals(self) -> Counter:
        """Points per language over all kinds."""
        out: Counter = Counter()
        for counts in self.points.values():
            out.update(counts)
        return out

    def resolved(self, prefer: dict[str, str | None] | None = None) -> "Evidence":
        """A copy where each family's evidence (FAMILIES: npm-style to typescript or javascript, gradle to java or
        kotlin, make to c or cpp…) goes to the member this evidence shows strictly most of, and on a tie to
        `prefer[family]` when given (an exchange: its session's choice), else to the family's default. A family
        still open is decided by the evidence as resolved so far (`./gradlew build` next to build.gradle, which
        leans java, is java), else dropped."""
        totals = self.totals()
        target = {key: _pick(members, totals, (prefer or {}).get(key, default)) for key, (members, default) in FAMILIES.items()}
        if None in target.values():
            after: Counter = Counter()
            for lang, pts in totals.items():
                to = target[lang] if lang in target else lang
                if to:
                    after[to] += pts
            target = {key: to or _pick(FAMILIES[key][0], after, None) for key, to in target.items()}
        out = Evidence()
        for kind, counts in self.points.items():
            c = Counter()
            for lang, pts in counts.items():
                to = target[lang] if lang in target else lang
                if to:
                    c[to] += pts
            out.points[kind] = c
        return out


def _pick(members: tuple[str, ...], weights: Any, default: str | None) -> str | None:
    """The member with strictly the most weight (and some), else `default`."""
    best = max(members, key=lambda m: weights.get(m, 0.0))
    top = weights.get(best, 0.0)
    if top > 0 and all(weights.get(m, 0.0) < top for m in members if m != best):
        return best
    return default


@dataclass
class Classification:
    """A session's (or an exchange's) languages: normalised weights, the labels kept, and which signals decided."""

    weights: dict[str, float]
    signals: Counter  # kind of signal → points it gave (all languages)
    languages: frozenset[str]
    decided_by: str  # the signal kind that gave the labels most points; "parent", "none" or (exchanges) INHERITED otherwise

    def __contains__(self, language: str) -> bool:
        return language in self.languages


def path_language(path: str, content: str | None = None) -> tuple[str | None, float]:
    """The language a path points to, or the family of languages (FAMILIES) it leaves open, and how much it counts
    (shell scripts and project files such as Cargo.toml count half). `content`: what an edit wrote to it, which tells
    a Kubernetes manifest from other YAML."""
    p = PurePosixPath(path.replace("\\", "/"))
    lang = PROJECT_FILES.get(p.name) or _PROJECT_SUFFIXES.get(p.suffix.lower())
    if lang:
        return lang, 0.5
    lang = _code_language(path, content)
    return lang, 0.5 if lang == "shell" or lang is None else 1.0


def _code_language(path: str, content: str | None = None) -> str | None:
    """The language (or family) a source file's path names: languages.language_of_path, but a .h header may be C++
    and a .yaml file is the yaml language only when it is a manifest (see the module docstring)."""
    p = PurePosixPath(path.replace("\\", "/"))
    suffix = p.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return _yaml_language(p, content)
    if suffix == ".h":
        return _C_FIRST
    return language_of_path(path)


def is_code_of(path: str, language: str, content: str | None = None) -> bool:
    """Whether a changed file is `language` code by this module's rules, for an exchange already classified as
    `language` (code_change records): a .h header is C or C++ code, a .yaml file is yaml code unless it is tool
    configuration (CI, compose, dot files; see the module docstring), any other file by its extension."""
    lang = _code_language(path, content)
    if lang in FAMILIES:
        return language in FAMILIES[lang][0]
    return lang == language


def _yaml_language(p: PurePosixPath, content: str | None) -> str | None:
    """yaml for a manifest, None for tool configuration (CI, compose, lint configs), _YAML_IF_SEEN otherwise."""
    parts = [x.lower() for x in p.parts if x not in ("/", ".", "..")]
    if not parts:
        return None
    stem = parts[-1].rsplit(".", 1)[0]
    if any(x.startswith(".") for x in parts) or _CONFIG_YAML.fullmatch(stem):
        return None
    if (stem in _MANIFEST_NAMES or stem.startswith("values") or _MANIFEST_DIRS.intersection(parts[:-1])
            or _MANIFEST_WORDS.intersection(re.split(r"[-_.]+", stem))):
        return "yaml"
    if content and _MANIFEST_TEXT.search(content):
        return "yaml"
    return _YAML_IF_SEEN


def _add_path(ev: Evidence, seen: set[tuple[str, str]], kind: str, path: Any, content: str | None = None) -> None:
    if not isinstance(path, str) or not path or (kind, path) in seen:
        return
    seen.add((kind, path))
    lang, scale = path_language(path, content)
    ev.add(kind, lang, scale)


def _simple_commands(command: str) -> list[tuple[int, int, list[str]]]:
    """The simple commands of a shell command line: (start, end, words), words without their quotes.

    Splits at newlines, `;`, `&`, `|`, `(`, `)`, backticks and `$(`; quoted text and heredoc bodies stay inside one
    word or are skipped, `#` comments are dropped, redirections end a word. Linear in the command's length.
    """
    out: list[tuple[int, int, list[str]]] = []
    words: list[str] = []
    word: list[str] = []
    in_word = False
    start = -1
    heredocs: list[str] = []
    i, n = 0, len(command)

    def flush_word() -> None:
        nonlocal in_word
        if in_word:
            words.append("".join(word))
            word.clear()
            in_word = False

    def flush_command(at: int) -> None:
        nonlocal words, start
        flush_word()
        if words:
            out.append((start, at, words))
        words, start = [], -1

    while i < n:
        c = command[i]
        if start < 0 and not c.isspace():
            start = i
        if c == "\\":
            nxt = command[i + 1:i + 2]
            if nxt == "\n":
                i += 2
                continue
            word.append(nxt if nxt and nxt in " \t'\"\\;&|()<>$`#*?[]{}!" else c + nxt)
            in_word, i = True, i + 2
            continue
        if c == "'":
            j = command.find("'", i + 1)
            j = n if j < 0 else j
            word.append(command[i + 1:j])
            in_word, i = True, j + 1
            continue
        if c == '"':
            j = i + 1
            while j < n and command[j] != '"':
                j += 2 if command[j] == "\\" else 1
            word.append(command[i + 1:min(j, n)].replace('\\"', '"'))
            in_word, i = True, j + 1
            continue
        if c in " \t\r":
            flush_word()
            i += 1
            continue
        if c == "#" and not in_word:
            j = command.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "\n":
            flush_command(i)
            i += 1
            for delim in heredocs:  # skip each heredoc's body, up to its delimiter line
                while i < n:
                    j = command.find("\n", i)
                    line = command[i:n if j < 0 else j]
                    i = n if j < 0 else j + 1
                    if line.strip() == delim:
                        break
            heredocs.clear()
            continue
        if c == "<" and command.startswith("<<", i) and not command.startswith("<<<", i):
            flush_word()
            i += 2
            if command[i:i + 1] == "-":
                i += 1
            while i < n and command[i] in " \t":
                i += 1
            j = i
            while j < n and not command[j].isspace() and command[j] not in ";&|()<>":
                j += 1
            delim = command[i:j].strip("'\"")
            if delim:
                heredocs.append(delim)
            i = j
            continue
        if c in "<>" or (c == "&" and command[i + 1:i + 2] == ">"):
            flush_word()
            i += 1
            while i < n and command[i] in "<>":
                i += 1
            while i < n and command[i] in "&|":
                i += 1
            continue
        if c in ";&|()`" or command.startswith("$(", i):
            flush_command(i)
            i += 2 if c == "$" else 1
            continue
        word.append(c)
        in_word = True
        i += 1
    flush_command(n)
    return out


def _program_name(word: str) -> str:
    """A program's name as typed: its file name, lower case, without .exe/.bat/.cmd/.phar (./gradlew.bat → gradlew)."""
    name = re.split(r"[\\/]", word)[-1].lower().lstrip(".")
    for suffix in (".exe", ".bat", ".cmd", ".phar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _invocations(command: str, depth: int = 0) -> list[tuple[int, int, str, list[str]]]:
    """Each simple command's (start, end, program, arguments), wrappers such as `sudo`, `env X=1`, `timeout 60`
    skipped and `bash -c '…'` looked into."""
    out: list[tuple[int, int, str, list[str]]] = []
    for start, end, words in _simple_commands(command):
        i = 0
        while i < len(words):
            if _ASSIGNMENT.match(words[i]):
                i += 1
            elif words[i] == "command" and words[i + 1:i + 2] in (["-v"], ["-V"]):  # `command -v helm` only looks it up
                i = len(words)
            elif words[i] in _WRAPPERS:
                i += 1
                while i < len(words) and (words[i].startswith("-") or _ASSIGNMENT.match(words[i]) or _DURATION.fullmatch(words[i])):
                    i += 2 if words[i] in _WRAPPER_OPTION_ARGS else 1
            else:
                break
        if i >= len(words):
            continue
        prog, args = _program_name(words[i]), words[i + 1:]
        if prog == "bundle" and args[:1] == ["exec"] and len(args) > 1 and _program_language(_program_name(args[1]), args[2:]):
            prog, args = _program_name(args[1]), args[2:]  # `bundle exec pod install`: CocoaPods pinned by a Gemfile
        if prog in _SHELLS and depth < 2:
            flag = next((k for k, a in enumerate(args) if re.fullmatch(r"-[a-z]*c[a-z]*", a)), None)
            if flag is not None and flag + 1 < len(args):
                out.extend((start, end, p, a) for _, _, p, a in _invocations(args[flag + 1], depth + 1))
                continue
        out.append((start, end, prog, args))
    return out


def _c_or_cpp(args: list[str]) -> str | None:
    """cpp or c when a compiler's or build tool's arguments name a C++ or C file or language flag, else None."""
    named = {language_of_path(a) for a in args if "." in a}
    pairs = {f"{a}{b}" for a, b in zip(args, args[1:]) if a == "-x"}
    if "cpp" in named or any(_CPP_FLAG.fullmatch(a) for a in (*args, *pairs)):
        return "cpp"
    if "c" in named or any(_C_FLAG.fullmatch(a) for a in (*args, *pairs)):
        return "c"
    return None


def _program_language(prog: str, args: list[str]) -> str | None:
    """The language (or family) a program run as a command names, for the languages matched only as programs."""
    sub = next((a for a in args if not a.startswith("-")), "")
    if prog == "swift":
        return "swift" if sub in _SWIFT_SUBCOMMANDS or any(a.endswith(".swift") for a in args) else None
    if prog in _SWIFT_TOOLS or (prog == "pod" and sub in _POD_SUBCOMMANDS):
        return "swift"
    if prog in _JAVA_TOOLS or (prog == "java" and any(a.endswith(".java") for a in args)):
        return "java"
    if prog == "java" or prog in _JAVA_FIRST_TOOLS:
        return _JAVA_FIRST
    if prog in ("gradle", "gradlew"):
        if any(a.endswith((".kt", ".kts")) for a in args):
            return "kotlin"
        return "java" if any(a.endswith(".java") for a in args) else _JVM
    if prog in _KOTLIN_TOOLS:
        return "kotlin"
    if _CPP_COMPILER.fullmatch(prog):
        return "cpp"
    if _C_COMPILER.fullmatch(prog):
        return _c_or_cpp(args) or _C_FIRST
    if prog in _BUILD_RUNNERS:
        return _c_or_cpp(args) or _C_OR_CPP
    if prog in _CPP_FIRST_TOOLS:
        return _c_or_cpp(args) or _CPP_FIRST
    if prog in _CSHARP_TOOLS:
        return "csharp"
    if prog in _PHP_TOOLS:
        return "php"
    if prog in _YAML_TOOLS or (prog == "kind" and sub in _KIND_SUBCOMMANDS):
        return "yaml"
    return None


def _add_command(ev: Evidence, seen: set[tuple[str, str]], command: str) -> None:
    clipped = _clip(command)
    found: set[str] = set()
    masked = command
    for start, end, prog, args in _invocations(clipped):
        lang = _program_language(prog, args)
        if lang:
            found.add(lang)
            if prog not in _BUILD_RUNNERS:  # `kubectl get node` runs no Node: blank a tool's arguments for the word patterns
                masked = clipped if masked is command else masked
                masked = masked[:start] + " " * (end - start) + masked[end:]
    for pattern, lang in _COMMANDS:
        if pattern.search(masked):
            ev.add("command", lang)
    for lang in found:
        ev.add("command", lang)
    for m in _PATH_IN_TEXT.finditer(clipped):
        _add_path(ev, seen, "mention", m.group(1))
    for m in _JVM_DIR.finditer(clipped):
        if ("mention", m.group(0)) not in seen:
            seen.add(("mention", m.group(0)))
            ev.add("mention", m.group(1))


def _clip(text: str) -> str:
    """The head and tail of a long text: where compilers and test runners print what matters."""
    return text if len(text) <= 2 * _SCAN_CHARS else text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]


def _add_output(ev: Evidence, text: str) -> None:
    text = _clip(text)
    langs = {lang for pattern, lang in _OUTPUTS if pattern.search(text)}
    langs |= {_code_language(m.group(1)) for m in _PATH_WITH_LINE.finditer(text)} - {None, _YAML_IF_SEEN}
    for lang in langs:
        ev.add("output", lang)


def _fence_language(info: str) -> str | None:
    lang = language_of_fence(info)
    if lang is None and info.strip().split(maxsplit=1)[0].lower() in ("yaml", "yml"):
        return "yaml"
    return lang


def _add_text(ev: Evidence, seen: set[tuple[str, str]], text: str) -> None:
    text = _clip(text)
    for m in _FENCE.finditer(text):
        lang = _fence_language(m.group(1))
        if lang == "yaml":  # YAML blocks show CI and compose files as often as manifests: only a manifest counts
            close = _FENCE_CLOSE.search(text, m.end())
            if not _MANIFEST_TEXT.search(text, m.end(), close.start() if close else len(text)):
                continue
        if lang not in _FENCE_SKIP:
            ev.add("fence", lang)
    for m in _PATH_IN_TEXT.finditer(text):
        _add_path(ev, seen, "mention", m.group(1))


def _add_tool(ev: Evidence, seen: set[tuple[str, str]], part: dict[str, Any]) -> None:
    tool = str(part.get("tool") or "").lower()
    state = part.get("state") if isinstance(part.get("state"), dict) else {}
    inp = state.get("input") if isinstance(state.get("input"), dict) else {}
    kind = "edit" if tool in EDIT_TOOLS else "read"
    written = _written(inp) if kind == "edit" else None  # tells a Kubernetes manifest from other YAML
    for key in ("filePath", "path", "file"):
        _add_path(ev, seen, kind, inp.get(key), written)
    for edit in inp.get("edits") or []:
        if isinstance(edit, dict):
            _add_path(ev, seen, "edit", edit.get("filePath"), _written(edit))
    if isinstance(inp.get("patchText"), str):
        for f in patch_files(inp["patchText"]):
            _add_path(ev, seen, "edit", f, _clip(inp["patchText"]))
    # File filters such as **/*.rs (a grep `pattern` is a regex, not a path).
    for key in ("pattern",) if tool == "glob" else ("include", "glob") if tool == "grep" else ():
        _add_path(ev, seen, "read", inp.get(key))
    if isinstance(inp.get("command"), str):
        _add_command(ev, seen, inp["command"])
    out = state.get("output") if state.get("output") is not None else state.get("error")
    if isinstance(out, str) and out:
        _add_output(ev, out)


def _written(inp: dict[str, Any]) -> str | None:
    """What an edit tool call wrote (write's content, edit's newString), clipped."""
    text = inp.get("content") if isinstance(inp.get("content"), str) else inp.get("newString")
    return _clip(text) if isinstance(text, str) else None


def evidence_of(messages: Iterable[Message]) -> Evidence:
    """Every language signal in some messages: a whole session's, or one exchange's."""
    ev = Evidence()
    seen: set[tuple[str, str]] = set()
    for message in messages:
        for part in message.parts:
            ptype = part.get("type")
            if ptype == "tool":
                _add_tool(ev, seen, part)
            elif ptype == "patch":
                for f in part.get("files") or []:
                    _add_path(ev, seen, "patch", f)
            elif ptype == "text" and not part.get("synthetic") and isinstance(part.get("text"), str):
                _add_text(ev, seen, part["text"])
            elif ptype == "file":
                _add_path(ev, seen, "read", part.get("filename") or part.get("url"))
    return ev


def evidence(session: Session) -> Evidence:
    """Every language signal in one session's own messages."""
    return evidence_of(session.messages)


def _weights(ev: Evidence) -> dict[str, float]:
    totals = ev.totals()
    total = sum(totals.values())
    if total < MIN_POINTS:
        return {}
    return {lang: pts / total for lang, pts in totals.most_common() if pts > 0}


def _decider(ev: Evidence, languages: Iterable[str]) -> str:
    langs = set(languages)
    scored = {kind: sum(c[l] for l in langs) for kind, c in ev.points.items()}
    best = max(scored.items(), key=lambda kv: kv[1], default=("none", 0.0))
    return best[0] if best[1] > 0 else "none"


def _signals(ev: Evidence) -> Counter:
    return Counter({kind: round(sum(c.values()), 3) for kind, c in ev.points.items() if sum(c.values()) > 0})


def from_evidence(ev: Evidence, parent: Classification | None = None) -> Classification:
    """A Classification from a session's evidence, merged with its parent session's when it has one."""
    ev = ev.resolved()
    own = _weights(ev)
    labels = {lang for lang, w in own.items() if w >= THRESHOLD}
    if parent is not None and parent.languages - {GENERAL}:
        if not own:
            return Classification(dict(parent.weights), Counter(), parent.languages, "parent")
        merged = {l: (own.get(l, 0.0) + parent.weights.get(l, 0.0)) / 2 for l in set(own) | set(parent.weights)}
        languages = frozenset(labels | (parent.languages - {GENERAL}))
        return Classification(dict(sorted(merged.items(), key=lambda kv: -kv[1])), _signals(ev), languages, _decider(ev, labels) if labels else "parent")
    if not labels:
        return Classification({GENERAL: 1.0}, _signals(ev), frozenset({GENERAL}), "none")
    return Classification(own, _signals(ev), frozenset(labels), _decider(ev, labels))


def classify(session: Session, parent: Classification | None = None) -> Classification:
    """A single session's languages from its own signals (and its parent's classification, if given).

    Use `classify_all` to classify sessions together with their subagents.
    """
    return from_evidence(evidence(session), parent)


def classify_exchange(messages: Iterable[Message], session: Classification) -> Classification:
    """One exchange's languages (a user message and the assistant steps answering it), given its session's.

    With a decisive signal of its own the exchange gets the labels its own weights select (THRESHOLD,
    MIN_POINTS as for sessions); without one it inherits the session's weights and labels
    (`decided_by` = INHERITED, `signals` still its own, weak, ones).
    """
    w = session.weights
    prefer = {key: _pick(members, w, default) for key, (members, default) in FAMILIES.items()}  # the session's choices
    ev = evidence_of(messages).resolved(prefer)
    own = _weights(ev)
    labels = {lang for lang, weight in own.items() if weight >= THRESHOLD}
    if labels:
        return Classification(own, _signals(ev), frozenset(labels), _decider(ev, labels))
    return Classification(dict(session.weights), _signals(ev), session.languages, INHERITED)


def classify_all(sessions: Iterable[Session]) -> dict[str, Classification]:
    """Every session's classification, subagent sessions attributed through their parents.

    A child merges its own evidence with its parent's result and keeps the parent's labels. A
    session without evidence of its own (it only delegated) is classified by its descendants'
    evidence instead, since their work was done for it.
    """
    by_id = {s.id: s for s in sessions}
    own = {sid: evidence(s) for sid, s in by_id.items()}
    children: dict[str, list[str]] = {}
    for s in by_id.values():
        if s.parent_id and s.parent_id in by_id and s.parent_id != s.id:
            children.setdefault(s.parent_id, []).append(s.id)
    subtree: dict[str, Evidence] = {}

    def tree(sid: str, path: frozenset[str]) -> Evidence:
        if sid not in subtree:
            ev = Evidence()
            ev += own[sid]
            for child in children.get(sid, []):
                if child not in path:  # a parent cycle in broken data must not recurse forever
                    ev += tree(child, path | {child})
            subtree[sid] = ev
        return subtree[sid]

    def basis(sid: str) -> Evidence:
        mine = own[sid]
        return mine if sum(mine.resolved().totals().values()) >= MIN_POINTS else tree(sid, frozenset({sid}))

    out: dict[str, Classification] = {}
    roots = [sid for sid, s in by_id.items() if not (s.parent_id and s.parent_id in by_id and s.parent_id != s.id)]
    stack: list[tuple[str, Classification | None]] = [(sid, None) for sid in roots]
    while stack:
        sid, parent = stack.pop()
        if sid in out:
            continue
        out[sid] = from_evidence(basis(sid), parent)
        stack.extend((child, out[sid]) for child in children.get(sid, []))
    for sid in by_id:  # sessions only reachable through a cycle
        out.setdefault(sid, from_evidence(own[sid]))
    return out


def classifications(result: LoadResult) -> dict[str, Classification]:
    """Classifications of a LoadResult's sessions, computed once and cached on the result."""
    cached = result.cache.get("classifications")
    if cached is None or cached[0] != len(result.sessions):
        cached = (len(result.sessions), classify_all(result.sessions))
        result.cache["classifications"] = cached
    return cached[1]


def languages_seen(result: LoadResult) -> set[str]:
    """The languages at least one loaded session is classified as (`general` excluded)."""
    return {lang for c in classifications(result).values() for lang in c.languages} - {GENERAL}
