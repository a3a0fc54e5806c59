"""Small real git repositories with real history, vendored as git bundles so tests run offline.

Each bundle in forge_assets_tests/data/real_repos/ holds the newest commits of a public repository's first-parent
line (their real authors, committers, dates and messages) restricted to a subset of its files that keeps the
repository's layout for its language. data/real_repos/README.md records, per bundle, the source URL and commit, the
commits and paths kept, the licence and the command that made it (make_bundle.sh there).

    from forge_assets_tests.real_repos import REAL_REPOS, clone_real_repo
    work_tree = clone_real_repo("javapoet", tmp_path / "javapoet")

Cloning is plain `git clone` of a local file: no network, tens of milliseconds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data" / "real_repos"


@dataclass(frozen=True)
class RealRepo:
    """One vendored repository."""

    name: str
    bundle: Path  # the git bundle (branch main, HEAD)
    language: str  # the main language: a forge_assets.languages name
    source: str  # the public repository it was cut from
    source_commit: str  # the source commit whose files (under the kept paths) are the bundle's HEAD tree
    head: str  # the bundle's HEAD commit (its ids differ from the source's: the trees are subsets)
    commits: int  # commits in the bundle (a linear history)
    files: int  # files at HEAD
    licence: str
    notes: str


def _repo(name: str, **fields) -> RealRepo:
    return RealRepo(name=name, bundle=DATA_DIR / f"{name}.bundle", **fields)


REAL_REPOS: dict[str, RealRepo] = {r.name: r for r in (
    _repo("swift-argument-parser", language="swift", source="https://github.com/apple/swift-argument-parser",
          source_commit="892f7562a399b9582e18efe3e2d0ced4e075a054", head="610321694813d05337293e74bfa209d1c87f5b84",
          commits=87, files=121, licence="Apache-2.0 (with the Swift runtime library exception)",
          notes="Package.swift, README.md, LICENSE.txt, Sources/ArgumentParser (its DocC articles included, the "
                "Documentation.docc/Images PNGs left out), Sources/ArgumentParserToolInfo, "
                "Sources/ArgumentParserTestHelpers, Tests/ArgumentParserUnitTests (with its text snapshots); "
                "`///` doc comments throughout, Swift 6 constructs (typed throws, `#if` inside type bodies)"),
    _repo("turbine", language="kotlin", source="https://github.com/cashapp/turbine",
          source_commit="e2f5cb0d0a2001053479282442efe6070bebffdd", head="61da1171e000358dd49521a279628379806e8551",
          commits=108, files=25, licence="Apache-2.0",
          notes="Kotlin Multiplatform library: src/ (commonMain, commonTest, jvmTest, nonJvmTest), build.gradle, "
                "settings.gradle, gradle.properties, gradle/libs.versions.toml, README.md, CHANGELOG.md, "
                "LICENSE.txt; KDoc on the public API"),
    _repo("javapoet", language="java", source="https://github.com/square/javapoet",
          source_commit="b9017a9503b76e11b4ad4c1a9f050e2d29112cb0", head="b1dc134d36b90c5c3703d0d182566a9106c8a7ad",
          commits=103, files=29, licence="Apache-2.0",
          notes="Maven layout: pom.xml, src/main/java (all 17 classes), 8 of the tests under src/test/java, "
                "README.md, CHANGELOG.md, LICENSE.txt; Javadoc on the public API"),
    _repo("flux2-kustomize-helm-example", language="yaml",
          source="https://github.com/fluxcd/flux2-kustomize-helm-example",
          source_commit="4f1a5b1051b469108d1bdf0ebec6c814427e3834", head="42ea3a9b433b8ec2617827d40e0f2a436b3e4864",
          commits=66, files=34, licence="Apache-2.0",
          notes="the whole repository (Kubernetes manifests, Kustomize overlays, Flux HelmReleases, GitHub workflows, "
                "a shell script) and its whole first-parent history, without the two README screenshots "
                "(.github/screens/*.png)"),
)}


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def clone_real_repo(name: str, dest: Path) -> Path:
    """Clone the bundle of REAL_REPOS[name] into dest (`git clone --quiet`, branch main) and return the work tree.

    A dest that already is a clone of that bundle at its HEAD is returned as it is (a session-scoped fixture and the
    tests using it can share one clone; a test that changes the work tree should clone into its own folder).
    """
    if name not in REAL_REPOS:
        raise KeyError(f"no vendored repository {name!r}; known: {', '.join(sorted(REAL_REPOS))}")
    repo = REAL_REPOS[name]
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        if (dest / ".git").exists() and _git("-C", str(dest), "rev-parse", "HEAD") == repo.head:
            return dest
        raise FileExistsError(f"{dest} exists and is not a clone of {repo.bundle.name} at {repo.head[:12]}. "
                              "Fix: pass a new or empty folder.")
    if not repo.bundle.is_file():
        raise FileNotFoundError(f"{repo.bundle} is missing. Fix: restore it from git (git checkout -- {repo.bundle}) "
                                f"or rebuild it as {DATA_DIR / 'README.md'} says.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "--quiet", str(repo.bundle), str(dest))
    return dest
