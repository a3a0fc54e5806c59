"""Classification of sessions for swift, java, kotlin, c, cpp, csharp, php and yaml (Kubernetes manifests).

Every session is a real opencode SQLite database (or a real Claude Code transcript) read back by load_sources; each
language is classified from a command alone, from compiler/tool output alone and from the files touched alone, and
the short words these languages' tools have (make, swift, helm, php, kind) say nothing outside a command position.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from session_builders import Claude, Spec, bash, edit, read, text, write, write_db

from forge_assets.config import SessionSource
from forge_assets.sessions import GENERAL, classifications, load_sources
from forge_assets.sessions.classify import Classification, is_code_of
from forge_assets.sessions.conversations import exchanges

P = "/home/dev/project"


def classify_specs(tmp_path: Path, *specs: Spec) -> dict[str, Classification]:
    """The specs written to a real opencode.db, loaded and classified."""
    db = write_db(tmp_path / "opencode.db", list(specs), "late")
    result = load_sources([SessionSource(opencode=str(db))], tmp_path)
    assert len(result.sessions) == len(specs), result.warnings
    return classifications(result)


def classify_one(tmp_path: Path, spec: Spec) -> Classification:
    return classify_specs(tmp_path, spec)[spec.id]


# --- from a command alone ----------------------------------------------------------------------

COMMANDS = [
    ("swift", "swift build"), ("swift", "swift test --parallel"), ("swift", "swift run App"), ("swift", "swift package resolve"),
    ("swift", "swiftc -O Sources/main.swift -o app"), ("swift", "xcodebuild -scheme App -destination 'platform=iOS Simulator' test"),
    ("swift", "xcrun simctl list devices"), ("swift", "cd ios && pod install"),
    ("java", "mvn -q test"), ("java", "./mvnw spring-boot:run"), ("java", "javac -d out src/Main.java"),
    ("java", "java -jar target/app-1.0.jar"),
    ("kotlin", "kotlinc hello.kt -include-runtime -d hello.jar"), ("kotlin", "kotlin -version"),
    ("kotlin", "./gradlew ktlintFormat -PktFile=src/App.kt"),
    ("c", "gcc -Wall -o app main.c util.c"), ("c", "gcc -o app"), ("c", "cc -std=c11 -c parser"), ("c", "clang -O2 -c hash.c"),
    ("c", "make CC=clang app.c"),
    ("cpp", "g++ -std=c++17 -o app main.cpp"), ("cpp", "clang++ -c widget.cc"), ("cpp", "x86_64-linux-gnu-g++-13 -c a"),
    ("cpp", "clang -std=c++20 -c widget"), ("cpp", "gcc -x c++ -c widget"), ("cpp", "cmake -S . -B build && cmake --build build -j"),
    ("cpp", "ctest --test-dir build --output-on-failure"), ("cpp", "meson setup build && meson compile -C build"),
    ("csharp", "dotnet build"), ("csharp", "dotnet test --no-restore"), ("csharp", "dotnet run --project src/Api"),
    ("csharp", "dotnet new console -n Tool"), ("csharp", "msbuild App.sln /p:Configuration=Release"), ("csharp", "nuget restore"),
    ("php", "composer install"), ("php", "php artisan migrate"), ("php", "vendor/bin/phpunit --testdox"), ("php", "phpunit tests"),
    ("php", "php -l src/User.php"),
    ("yaml", "kubectl apply -f k8s/"), ("yaml", "helm upgrade --install web ./chart"), ("yaml", "kustomize build overlays/prod"),
    ("yaml", "flux reconcile kustomization apps --with-source"), ("yaml", "argo submit --watch workflow"),
    ("yaml", "kubeconform -strict -summary manifests/"), ("yaml", "kubeval --strict deploy/"), ("yaml", "yamllint -s ."),
    ("yaml", "argocd app sync web"), ("yaml", "kind create cluster --name dev"),
    # command positions: after wrappers, operators, in subshells and in `bash -c`
    ("cpp", "sudo -u builder env CXX=g++ cmake --build build"), ("c", "time make -j4 main.c"), ("swift", "(cd App && swift build)"),
    ("yaml", "timeout 60 kubectl rollout status deploy/web"), ("php", "bash -lc 'composer dump-autoload'"),
    ("yaml", "echo ok; helm lint charts/web"), ("csharp", "FOO=1 dotnet build | tail -5"), ("java", "x=$(mvn -q help:evaluate)"),
]


@pytest.mark.parametrize(("language", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_language_from_a_command(tmp_path: Path, language: str, command: str) -> None:
    c = classify_one(tmp_path, Spec().turn("build it", bash(command, "done")))
    assert c.languages == {language} and c.decided_by == "command", (c.weights, c.signals)


# --- from compiler or tool output alone ----------------------------------------------------------

OUTPUTS = [
    ("swift", "/Users/dev/App/Sources/App/Model.swift:12:5: error: cannot find 'x' in scope"),
    ("swift", "Test Suite 'All tests' failed at 2025-10-09 10:00:00.000.\n\t Executed 12 tests, with 1 failure (0 unexpected)"),
    ("swift", "** BUILD SUCCEEDED **"),
    ("java", "src/main/java/com/acme/App.java:12: error: ';' expected\n        return x\n                ^\n1 error"),
    ("java", "[ERROR] /home/dev/project/src/App.java:[12,5] cannot find symbol"),
    ("java", "Tests run: 12, Failures: 1, Errors: 0, Skipped: 0\n[INFO] BUILD FAILURE"),
    ("java", "> Task :compileJava FAILED"),
    ("kotlin", "e: file:///home/dev/project/src/main/kotlin/App.kt:12:5 Unresolved reference: foo"),
    ("kotlin", "e: App.kt: (12, 5): Unresolved reference: foo"),
    ("kotlin", "> Task :app:compileKotlin FAILED"),
    ("c", "main.c:10:5: error: expected ';' before 'return'"),
    ("c", "/home/dev/project/src/main.c:10:5: warning: unused variable 'x' [-Wunused-variable]"),
    ("c", "cc -O2 -Wall -c parser.c -o parser.o\ncc -o app parser.o main.o"),
    ("c", "In file included from main.c:1:\ninclude/list.h:3:10: fatal error: stdio.h: No such file or directory"),
    ("cpp", "src/widget.cpp:10:5: error: 'string' is not a member of 'std'"),
    ("cpp", "[ 50%] Building CXX object CMakeFiles/app.dir/src/main.cpp.o"),
    ("cpp", "/usr/bin/ld: main.o: undefined reference to `std::__cxx11::basic_string'"),
    ("csharp", "Program.cs(12,5): error CS1002: ; expected"),
    ("csharp", "/src/Api/Startup.cs(3,1): warning CS8019: Unnecessary using directive."),
    ("csharp", "Passed!  - Failed:     0, Passed:    14, Skipped:     0, Total:    14"),
    ("php", "PHP Parse error:  syntax error, unexpected token \"}\" in /var/www/app/User.php on line 12"),
    ("php", "PHP Fatal error:  Uncaught Error: Call to undefined function foo()"),
    ("php", "PHPUnit 10.5.2 by Sebastian Bergmann and contributors.\n\nOK (12 tests, 30 assertions)"),
    ("yaml", "error: error validating \"web\": error validating data: ValidationError(Deployment.spec): unknown field \"replica\""),
    ("yaml", "Error: INSTALLATION FAILED: execution error at (web/templates/deployment.yaml:12:5): image is required"),
    ("yaml", "deployment.apps/web configured\nservice/web unchanged"),
    ("yaml", "error: resource mapping not found: no matches for kind \"Ingress\" in version \"extensions/v1beta1\""),
    ("yaml", "  3:1       error    wrong indentation: expected 2 but found 4  (indentation)"),
]


@pytest.mark.parametrize(("language", "output"), OUTPUTS, ids=[o[:40] for _, o in OUTPUTS])
def test_language_from_tool_output(tmp_path: Path, language: str, output: str) -> None:
    c = classify_one(tmp_path, Spec().turn("check it", bash("just check", output)))
    assert c.languages == {language} and c.decided_by == "output", (c.weights, c.signals)


# --- from the files touched alone ----------------------------------------------------------------

FILES = [
    ("swift", "Sources/App/Model.swift"), ("java", "src/main/java/com/acme/App.java"), ("kotlin", "app/src/main/kotlin/App.kt"),
    ("c", "src/parser.c"), ("c", "include/parser.h"), ("cpp", "src/widget.cpp"), ("cpp", "include/widget.hpp"),
    ("csharp", "src/Api/Program.cs"), ("php", "app/Models/User.php"),
    ("yaml", "k8s/deployment.yaml"), ("yaml", "clusters/prod/apps.yaml"), ("yaml", "charts/web/templates/ingress.yaml"),
    ("yaml", "overlays/prod/kustomization.yaml"), ("yaml", "web/values-prod.yaml"), ("yaml", "infra/my-configmap.yml"),
]


@pytest.mark.parametrize(("language", "path"), FILES, ids=[p for _, p in FILES])
def test_language_from_files_touched(tmp_path: Path, language: str, path: str) -> None:
    c = classify_one(tmp_path, Spec().turn("change it", read(f"{P}/{path}"), edit(f"{P}/{path}")))
    assert c.languages == {language} and c.decided_by == "edit", (c.weights, c.signals)


def test_a_manifest_by_what_was_written(tmp_path: Path) -> None:
    """A .yaml file whose name says nothing is a manifest when the edit wrote one (apiVersion, Helm templating)."""
    manifest = write(f"{P}/platform/web.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n")
    helm = edit(f"{P}/platform/api.yaml", "image: x", "image: {{ .Values.image.repository }}")
    plain = write(f"{P}/platform/settings.yaml", "log_level: debug\nworkers: 4\n")
    got = classify_specs(tmp_path, s1 := Spec().turn("add a deployment", manifest), s2 := Spec().turn("template the image", helm),
                         s3 := Spec().turn("tune the workers", plain))
    assert got[s1.id].languages == {"yaml"} and got[s2.id].languages == {"yaml"}
    assert got[s3.id].languages == {GENERAL}  # app configuration is not the yaml language


# --- real Claude Code transcripts ---------------------------------------------------------------

def test_claude_code_sessions(tmp_path: Path) -> None:
    root = tmp_path / "projects" / "-home-dev-app"
    sessions = {
        "kotlin": Claude(session_id="11111111-1111-4111-8111-111111111111")
        .user("the login screen crashes").tool("Read", {"file_path": "/home/dev/app/app/src/main/kotlin/Login.kt"}, "class Login")
        .tool("Edit", {"file_path": "/home/dev/app/app/src/main/kotlin/Login.kt", "old_string": "a", "new_string": "b"}, "ok")
        .tool("Bash", {"command": "./gradlew assembleDebug"}, "e: file:///home/dev/app/app/src/main/kotlin/Login.kt:3:1 Unresolved reference")
        .say("Fixed."),
        "yaml": Claude(session_id="22222222-2222-4222-8222-222222222222")
        .user("scale the web deployment to 3")
        .tool("Edit", {"file_path": "/home/dev/app/k8s/web/deployment.yaml", "old_string": "replicas: 1", "new_string": "replicas: 3"}, "ok")
        .tool("Bash", {"command": "kubectl apply -f k8s/web/ --dry-run=server"}, "deployment.apps/web configured (server dry run)")
        .say("Scaled."),
        "php": Claude(session_id="33333333-3333-4333-8333-333333333333")
        .user("the signup form 500s").tool("Bash", {"command": "php artisan test"}, "PHP Fatal error:  Uncaught TypeError in app/Http/Signup.php")
        .say("Found it."),
        "csharp": Claude(session_id="44444444-4444-4444-8444-444444444444")
        .user("fix the build").tool("Bash", {"command": "dotnet build"}, "Program.cs(4,20): error CS1002: ; expected")
        .tool("Edit", {"file_path": "/home/dev/app/Program.cs", "old_string": "x", "new_string": "x;"}, "ok").say("Fixed."),
    }
    for c in sessions.values():
        c.write(root / f"{c.session_id}.jsonl")
    result = load_sources([SessionSource(claude_code=str(tmp_path / "projects"))], tmp_path)
    got = classifications(result)
    assert {lang: got[c.session_id].languages for lang, c in sessions.items()} == {lang: {lang} for lang in sessions}


# --- short words outside a command position say nothing ----------------------------------------

NOT_COMMANDS = [
    'git commit -m "make the swift response faster; php at the helm, kubectl too"',
    "echo make swift helm php kubectl dotnet mvn gcc",
    "curl -s https://www.php.net/manual/en/function.array-map.php",
    "grep -rn 'make install' docs/ && grep -c helm README.md",
    "cat > notes.txt <<'EOF'\nmake install\nhelm upgrade web ./chart\nswift build\nEOF",
    "ls ~/.kube ~/.swiftpm # then make, helm or php",
    "open https://kind.sigs.k8s.io && echo kind create cluster",
    "git log --oneline -- Makefile CMakeLists.txt.bak",
    "brew install helm kubectl swiftlint && sudo apt-get install -y g++ cmake php-cli",
    "command -v kubectl || which helm; man make",
]


@pytest.mark.parametrize("command", NOT_COMMANDS)
def test_words_in_arguments_quotes_heredocs_and_comments_are_not_commands(tmp_path: Path, command: str) -> None:
    c = classify_one(tmp_path, Spec().turn("tidy up", bash(command, "ok")))
    assert c.languages == {GENERAL}, (command, c.weights, c.signals)


def test_prose_is_not_a_command(tmp_path: Path) -> None:
    prose = ("We need a swift response: make it faster, you are at the helm. See https://www.php.net/manual/en/index.php, "
             "then run make, helm, kubectl or dotnet as you like; a kind word helps.")
    c = classify_one(tmp_path, Spec().turn(prose, answer=f"Sure. {prose}"))
    assert c.languages == {GENERAL}


def test_make_follows_the_project(tmp_path: Path) -> None:
    """make and ninja drive Go, Python and docs builds too: alone they say nothing, in a C project they are C."""
    go = Spec().turn("run the tests", edit(f"{P}/internal/api/server.go"), bash("make test", "ok  \texample.com/api\t0.2s"))
    py = Spec().turn("lint", edit(f"{P}/app/main.py"), bash("make lint", "All checks passed!"), bash("ninja -C docs", "done"))
    c_project = Spec().turn("fix the leak", edit(f"{P}/src/list.c"), bash("make", "done"), bash("make check", "All 4 tests passed"))
    got = classify_specs(tmp_path, go, py, c_project)
    assert got[go.id].languages == {"go"} and "c" not in got[go.id].weights and "cpp" not in got[go.id].weights
    assert got[py.id].languages == {"python"}
    assert got[c_project.id].languages == {"c"} and got[c_project.id].signals["command"] == 3.0


def test_kubernetes_tool_arguments_do_not_trigger_other_languages(tmp_path: Path) -> None:
    """`kubectl describe node` names a Kubernetes node, not Node.js; `kubectl run ruby` a pod."""
    c = classify_one(tmp_path, Spec().turn("why is the node NotReady?", bash("kubectl describe node worker", "Conditions: ..."),
                                           bash("kubectl run ruby --image=ruby:3.3 --restart=Never", "pod/ruby created")))
    assert c.languages == {"yaml"} and set(c.weights) == {"yaml"}


def test_yaml_that_is_not_a_manifest(tmp_path: Path) -> None:
    """CI workflows, compose files and tool configuration are YAML but not the yaml language (Kubernetes manifests)."""
    ci = Spec().turn("deploy from CI", edit(f"{P}/.github/workflows/deploy.yml"), edit(f"{P}/docker-compose.yml"),
                     edit(f"{P}/mkdocs.yml"), edit(f"{P}/.pre-commit-config.yaml"))
    fence_ci = Spec().turn("show me a workflow", answer="```yaml\non: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n```")
    fence_k8s = Spec().turn("show me a service", answer="```yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n```")
    # A plain .yaml file counts once manifests are seen in the same session.
    with_kubectl = Spec().turn("roll out", edit(f"{P}/ops/web.yaml"), bash("kubectl apply -f ops/web.yaml", "deployment.apps/web created"))
    got = classify_specs(tmp_path, ci, fence_ci, fence_k8s, with_kubectl)
    assert got[ci.id].languages == {GENERAL} and got[fence_ci.id].languages == {GENERAL}
    assert got[fence_k8s.id].languages == {"yaml"} and got[fence_k8s.id].decided_by == "fence"
    assert got[with_kubectl.id].languages == {"yaml"} and got[with_kubectl.id].decided_by == "edit"


# --- gradle: java or kotlin? --------------------------------------------------------------------

def test_gradle_alone_is_neither_java_nor_kotlin(tmp_path: Path) -> None:
    """The documented decision: `./gradlew build` with nothing else is `general`; its context decides otherwise."""
    alone = Spec().turn("build it", bash("./gradlew build", "> Task :build\n\nBUILD SUCCESSFUL in 3s"))
    groovy = Spec().turn("build it", read(f"{P}/build.gradle"), bash("./gradlew build", "BUILD SUCCESSFUL in 3s"))
    kts = Spec().turn("build it", read(f"{P}/build.gradle.kts"), bash("./gradlew build", "BUILD SUCCESSFUL in 3s"))
    java_src = Spec().turn("fix it", edit(f"{P}/src/main/java/App.java"), bash("./gradlew test", "BUILD SUCCESSFUL in 3s"))
    kotlin_src = Spec().turn("fix it", edit(f"{P}/src/main/kotlin/App.kt"), bash("./gradlew test", "BUILD SUCCESSFUL in 3s"))
    java_out = Spec().turn("build it", bash("gradle build", "> Task :compileJava\nApp.java:3: error: ';' expected"))
    java_dir = Spec().turn("build it", bash("ls src/main/java/com/acme && ./gradlew build", "App.java Util.java"))
    got = classify_specs(tmp_path, alone, groovy, kts, java_src, kotlin_src, java_out, java_dir)
    assert got[alone.id].languages == {GENERAL} and got[alone.id].decided_by == "none"
    assert got[groovy.id].languages == {"java"}
    assert got[kts.id].languages == {"kotlin"}
    assert got[java_src.id].languages == {"java"} and set(got[java_src.id].weights) == {"java"}
    assert got[kotlin_src.id].languages == {"kotlin"} and set(got[kotlin_src.id].weights) == {"kotlin"}
    assert got[java_out.id].languages == {"java"} and got[java_out.id].decided_by == "output"
    assert got[java_dir.id].languages == {"java"}


def test_kotlin_dsl_and_maven_follow_the_sources(tmp_path: Path) -> None:
    """A Java project with a Kotlin build script is java; a Kotlin project built with Maven is kotlin."""
    java_kts = Spec().turn("add a service", edit(f"{P}/build.gradle.kts"), edit(f"{P}/src/main/java/Svc.java"),
                           bash("./gradlew test", "BUILD SUCCESSFUL in 5s"))
    kotlin_mvn = Spec().turn("add a service", edit(f"{P}/src/main/kotlin/Svc.kt"), read(f"{P}/pom.xml"),
                             bash("mvn test", "Tests run: 3, Failures: 0, Errors: 0, Skipped: 0"), bash("mvn package", "[INFO] BUILD SUCCESS"),
                             bash("java -jar target/svc.jar", "started"))
    got = classify_specs(tmp_path, java_kts, kotlin_mvn)
    assert got[java_kts.id].languages == {"java"} and set(got[java_kts.id].weights) == {"java"}
    assert got[kotlin_mvn.id].languages == {"kotlin"} and set(got[kotlin_mvn.id].weights) == {"kotlin"}


def test_a_gradle_only_exchange_takes_its_sessions_language(tmp_path: Path) -> None:
    s = Spec(title="kotlin app")
    s.turn("add the settings screen", write(f"{P}/app/src/main/kotlin/Settings.kt"), edit(f"{P}/app/src/main/kotlin/Main.kt"))
    s.turn("now build it", bash("./gradlew assembleDebug", "BUILD SUCCESSFUL in 12s"))
    s.turn("and run the unit tests", bash("./gradlew test", "BUILD SUCCESSFUL in 9s"), answer="All green.")
    db = write_db(tmp_path / "opencode.db", [s], "late")
    result = load_sources([SessionSource(opencode=str(db))], tmp_path)
    session = result.sessions[0]
    assert classifications(result)[s.id].languages == {"kotlin"}
    got = [c for _, _, c in exchanges(session, classifications(result)[s.id])]
    assert [c.languages for c in got] == [{"kotlin"}] * 3
    assert [c.decided_by for c in got] == ["edit", "command", "command"]  # gradle resolved by the session: an own signal


# --- c or cpp -----------------------------------------------------------------------------------

def test_c_or_cpp_from_the_project(tmp_path: Path) -> None:
    c_cmake = Spec().turn("fix the parser", edit(f"{P}/src/parser.c"), bash("cmake --build build", "[100%] Built target app"))
    cpp_cmake = Spec().turn("fix the widget", edit(f"{P}/src/widget.cpp"), read(f"{P}/CMakeLists.txt"), bash("cmake --build build", "ok"))
    header_cpp = Spec().turn("add a method", edit(f"{P}/include/widget.h"), edit(f"{P}/src/widget.cpp"))
    header_c = Spec().turn("add a function", edit(f"{P}/include/list.h"), edit(f"{P}/src/list.c"))
    header_c_output = Spec().turn("fix the build", edit(f"{P}/src/widget.cpp"),
                                  bash("make", "include/widget.h:3:10: error: 'vector' in namespace 'std' does not name a type"))
    got = classify_specs(tmp_path, c_cmake, cpp_cmake, header_cpp, header_c, header_c_output)
    assert got[c_cmake.id].languages == {"c"} and set(got[c_cmake.id].weights) == {"c"}
    assert got[cpp_cmake.id].languages == {"cpp"} and set(got[cpp_cmake.id].weights) == {"cpp"}
    assert got[header_cpp.id].languages == {"cpp"} and set(got[header_cpp.id].weights) == {"cpp"}
    assert got[header_c.id].languages == {"c"} and set(got[header_c.id].weights) == {"c"}
    assert got[header_c_output.id].languages == {"cpp"} and set(got[header_c_output.id].weights) == {"cpp"}


def test_mixed_c_and_cpp_session(tmp_path: Path) -> None:
    s = Spec().turn("wrap the C library for C++", edit(f"{P}/lib/ring.c"), edit(f"{P}/lib/ring_test.c"),
                    bash("gcc -c lib/ring.c", ""), edit(f"{P}/src/Ring.cpp"), edit(f"{P}/src/Ring.hpp"),
                    bash("g++ -std=c++20 -c src/Ring.cpp", ""))
    assert classify_one(tmp_path, s).languages == {"c", "cpp"}


def test_existing_languages_unchanged_next_to_new_ones(tmp_path: Path) -> None:
    """A Python service deployed with Helm is python and yaml; a Rust crate built in CI YAML stays rust."""
    py_helm = Spec().turn("ship the API", edit(f"{P}/app/api.py"), bash("pytest", "4 passed in 0.20s"),
                          edit(f"{P}/charts/api/values.yaml"), bash("helm upgrade --install api charts/api", "STATUS: deployed"))
    rust_ci = Spec().turn("cache the build in CI", edit(f"{P}/.github/workflows/ci.yml"), edit(f"{P}/src/lib.rs"),
                          bash("cargo test", "test result: ok. 3 passed"))
    got = classify_specs(tmp_path, py_helm, rust_ci)
    assert got[py_helm.id].languages == {"python", "yaml"}
    assert got[rust_ci.id].languages == {"rust"} and set(got[rust_ci.id].weights) == {"rust"}


def test_session_with_text_parts_only_for_new_fences(tmp_path: Path) -> None:
    """Fenced code in the answer names its language, as for the older languages."""
    specs = {lang: Spec().user("show me").assistant(text(f"Here:\n\n```{fence}\n{body}\n```")) for lang, fence, body in [
        ("swift", "swift", "let x = 1"), ("kotlin", "kotlin", "val x = 1"), ("csharp", "csharp", "var x = 1;"),
        ("php", "php", "<?php echo 1;"), ("cpp", "cpp", "int main() {}"), ("c", "c", "int main(void) {}"), ("java", "java", "class A {}"),
    ]}
    got = classify_specs(tmp_path, *specs.values())
    assert {lang: got[s.id].languages for lang, s in specs.items()} == {lang: {lang} for lang in specs}


# --- a labelled set of realistic sessions ------------------------------------------------------

def task(prompt: str) -> dict:
    from session_builders import tool

    return tool("task", {"description": prompt[:20], "prompt": prompt, "subagent_type": "general"}, "Task finished.")


def labelled() -> list[tuple[set[str], Spec]]:
    """(expected languages, session): each new language in realistic work, mixes, and traps."""
    out: list[tuple[set[str], Spec]] = []

    def add(labels: set[str], spec: Spec) -> Spec:
        out.append((labels, spec))
        return spec

    add({"swift"}, Spec().turn("the list view flickers", read(f"{P}/App/Views/ListView.swift"), edit(f"{P}/App/Views/ListView.swift"),
                               bash("xcodebuild -scheme App -destination 'platform=iOS Simulator,name=iPhone 15' build", "** BUILD SUCCEEDED **")))
    add({"swift"}, Spec().turn("add a tokenizer", write(f"{P}/Sources/Lex/Tokenizer.swift"), edit(f"{P}/Sources/Lex/Lexer.swift"),
                               bash("python3 scripts/gen_tokens.py", "wrote 40"),
                               bash("swift test", "Test Suite 'All tests' passed at 2025-10-09")))
    add({"swift"}, Spec().turn("add Alamofire", edit(f"{P}/ios/Podfile"), bash("cd ios && bundle exec pod install", "Pod installation complete!"),
                               edit(f"{P}/ios/App/Api.swift")))
    add({"java"}, Spec().turn("users endpoint returns 500", read(f"{P}/src/main/java/com/acme/UserController.java"),
                              edit(f"{P}/src/main/java/com/acme/UserController.java"), edit(f"{P}/src/main/resources/application.yml"),
                              bash("./mvnw test", "Tests run: 5, Failures: 0, Errors: 0, Skipped: 0\n[INFO] BUILD SUCCESS")))
    add({"java"}, Spec().turn("fix the order total", bash("./gradlew test", "> Task :compileJava\n> Task :test\n\nOrderServiceTest > total() FAILED\n"
                                                                         "    org.opentest4j.AssertionFailedError at OrderServiceTest.java:22"),
                              edit(f"{P}/src/main/java/com/acme/OrderService.java"), bash("./gradlew test", "BUILD SUCCESSFUL in 4s")))
    add({"kotlin"}, Spec().turn("the main screen crashes", read(f"{P}/app/src/main/java/com/acme/MainActivity.kt"),
                                edit(f"{P}/app/src/main/java/com/acme/MainActivity.kt"),
                                bash("./gradlew assembleDebug", "e: file:///home/dev/project/app/src/main/java/com/acme/MainActivity.kt:40:13 Unresolved reference: binding"),
                                bash("ls app/src/main/java/com/acme/MainActivity.kt", "")))
    add({"kotlin"}, Spec().turn("add a health route", edit(f"{P}/build.gradle.kts"), edit(f"{P}/src/main/kotlin/Application.kt"),
                                write(f"{P}/src/test/kotlin/HealthTest.kt"), bash("./gradlew test", "BUILD SUCCESSFUL in 9s")))
    add({"c"}, Spec().turn("the ring buffer overflows", edit(f"{P}/src/ring.c"), edit(f"{P}/include/ring.h"),
                           bash("make", "cc -O2 -Wall -c src/ring.c -o ring.o\ncc -o test_ring ring.o test.o"), bash("./test_ring", "all 6 ok")))
    add({"c"}, Spec().turn("port the blinky demo", bash("arm-none-eabi-gcc -mcpu=cortex-m4 -c main.c", "main.c:42:5: error: 'GPIOA' undeclared"),
                           edit(f"{P}/main.c")))
    add({"cpp"}, Spec().turn("speed up the engine", edit(f"{P}/src/engine.cpp"), edit(f"{P}/include/engine.h"),
                             bash("cmake --build build -j", "[ 50%] Building CXX object CMakeFiles/engine.dir/src/engine.cpp.o"),
                             bash("ctest --test-dir build", "100% tests passed, 0 tests failed out of 12")))
    add({"cpp", "python"}, Spec().turn("expose the engine to Python", write(f"{P}/src/bind.cpp"), edit(f"{P}/setup.py"),
                                       bash("pip install -e .", "Successfully installed engine"), write(f"{P}/tests/test_bind.py"),
                                       bash("pytest -q", "3 passed in 0.12s")))
    add({"csharp"}, Spec().turn("orders API paging", edit(f"{P}/Controllers/OrdersController.cs"), edit(f"{P}/Orders.Api.csproj"),
                                bash("dotnet test", "Passed!  - Failed:     0, Passed:    12, Skipped:     0, Total:    12")))
    add({"csharp"}, Spec().turn("make the player jump higher", read(f"{P}/Assets/Scripts/Player.cs"), edit(f"{P}/Assets/Scripts/Player.cs")))
    add({"php"}, Spec().turn("posts need a slug", edit(f"{P}/app/Http/Controllers/PostController.php"),
                             edit(f"{P}/resources/views/posts/show.blade.php"), bash("composer require cviebrock/eloquent-sluggable", "Generating optimized autoload files"),
                             bash("php artisan test", "PASS  Tests\\Feature\\PostTest")))
    add({"php"}, Spec().turn("lint the plugin", bash("php -l wp-content/plugins/shop/shop.php", "No syntax errors detected in shop.php")))
    add({"yaml"}, Spec().turn("bump the web chart", edit(f"{P}/clusters/prod/apps/web/helmrelease.yaml"),
                              bash("flux reconcile helmrelease web -n apps", "✔ applied revision 1.4.0")))
    add({"yaml"}, Spec().turn("staging needs 3 replicas", edit(f"{P}/overlays/staging/kustomization.yaml"), write(f"{P}/overlays/staging/patch-replicas.yaml"),
                              bash("kustomize build overlays/staging | kubeconform -strict -summary", "Summary: 5 resources found in 1 file - Valid: 5, Invalid: 0")))
    add({"yaml"}, Spec().turn("add a readiness probe", edit(f"{P}/charts/api/templates/deployment.yaml"),
                              bash("helm lint charts/api", "1 chart(s) linted, 0 chart(s) failed")))
    add({"go", "yaml"}, Spec().turn("add a size field to the Widget CRD", edit(f"{P}/api/v1/widget_types.go"),
                                    edit(f"{P}/internal/controller/widget_controller.go"), bash("make manifests", ""),
                                    edit(f"{P}/config/crd/bases/acme.io_widgets.yaml"), bash("go test ./...", "ok  \tacme.io/op/internal\t1.2s")))
    add({"csharp", "yaml"}, Spec().turn("deploy the API", edit(f"{P}/src/Api/Program.cs"), bash("dotnet build", "Build succeeded.\n    0 Warning(s)\n    0 Error(s)"),
                                        edit(f"{P}/deploy/api.yaml"), bash("kubectl apply -f deploy/api.yaml", "deployment.apps/api configured")))
    add({"kotlin", "swift"}, Spec().turn("share the API client with iOS", edit(f"{P}/shared/src/commonMain/kotlin/Api.kt"),
                                         bash("./gradlew :shared:assembleXCFramework", "BUILD SUCCESSFUL in 40s"),
                                         edit(f"{P}/iosApp/iosApp/ContentView.swift"), bash("xcodebuild -scheme iosApp build", "** BUILD SUCCEEDED **")))
    # traps
    add({"python"}, Spec().turn("ship it", edit(f"{P}/app/main.py"), edit(f"{P}/.github/workflows/deploy.yml"), edit(f"{P}/docker-compose.yml"),
                                edit(f"{P}/config/settings.yaml"), bash("pytest", "12 passed in 1.10s")))
    add({"ruby"}, Spec().turn("translate the flash", edit(f"{P}/app/controllers/sessions_controller.rb"), edit(f"{P}/config/locales/en.yml"),
                              bash("bin/rails test", "8 runs, 12 assertions, 0 failures")))
    add({"javascript"}, Spec().turn("fix the bundle", edit(f"{P}/src/index.js"), bash("make build", "webpack 5.90 compiled successfully"),
                                    bash("make -C docs html", "build succeeded")))
    add({GENERAL}, Spec().turn("what is in my kube config?", read("/home/dev/.kube/config"), answer="Two contexts: dev and prod."))
    add({GENERAL}, Spec().turn("make the release notes shorter", edit(f"{P}/CHANGELOG.md"), bash("git commit -am 'make notes shorter'", "[main 1a2b3c]")))
    # a parent that only delegates chart work to a subagent
    parent = add({"yaml"}, Spec(title="delegating").turn("update the chart", task("bump the image tag in the chart")))
    add({"yaml"}, Spec(parent_id=parent.id, agent="general").turn("bump the image tag in the chart", edit(f"{P}/charts/web/values.yaml"),
                                                                  bash("helm template web charts/web", "apiVersion: apps/v1\nkind: Deployment")))
    return out


def test_labelled_set(tmp_path: Path) -> None:
    cases = labelled()
    got = classify_specs(tmp_path, *[spec for _, spec in cases])
    misses = [(spec.messages[0].parts[0]["text"][:40], sorted(labels), sorted(got[spec.id].languages), got[spec.id].weights)
              for labels, spec in cases if got[spec.id].languages != labels]
    assert not misses, misses
    seen = {lang for c in got.values() for lang in c.languages}
    assert {"swift", "java", "kotlin", "c", "cpp", "csharp", "php", "yaml"} <= seen


def test_which_changed_files_are_code_of_a_language() -> None:
    """For code_change records of an exchange already classified: headers are C and C++, manifests yaml, CI YAML not."""
    assert is_code_of("include/widget.h", "cpp") and is_code_of("include/widget.h", "c")
    assert is_code_of("src/widget.cpp", "cpp") and not is_code_of("src/widget.cpp", "c")
    assert is_code_of("k8s/deployment.yaml", "yaml") and is_code_of("ops/web.yaml", "yaml")
    assert is_code_of("platform/web.yaml", "yaml", "apiVersion: v1\nkind: Service\n")
    assert not is_code_of(".github/workflows/deploy.yml", "yaml") and not is_code_of("docker-compose.yml", "yaml")
    assert is_code_of("App.kt", "kotlin") and not is_code_of("App.kt", "java") and not is_code_of("README.md", "yaml")


def test_a_make_only_exchange_follows_its_session(tmp_path: Path) -> None:
    """In a C session `make check` is C work of its own; in a Go session it says nothing and the exchange inherits go."""
    c_s = Spec(title="c").turn("fix the list", edit(f"{P}/src/list.c")).turn("run the checks", bash("make check", "PASS: 4"))
    go_s = Spec(title="go").turn("fix the server", edit(f"{P}/cmd/server/main.go")).turn("run the checks", bash("make check", "PASS: 4"))
    db = write_db(tmp_path / "opencode.db", [c_s, go_s], "late")
    result = load_sources([SessionSource(opencode=str(db))], tmp_path)
    labels = classifications(result)
    by_id = {s.id: s for s in result.sessions}
    c_ex = [c for _, _, c in exchanges(by_id[c_s.id], labels[c_s.id])]
    go_ex = [c for _, _, c in exchanges(by_id[go_s.id], labels[go_s.id])]
    assert [(c.languages, c.decided_by) for c in c_ex] == [({"c"}, "edit"), ({"c"}, "command")]
    assert [(c.languages, c.decided_by) for c in go_ex] == [({"go"}, "edit"), ({"go"}, "session")]


def test_a_parent_that_only_ran_gradle_is_classified_by_its_subagent(tmp_path: Path) -> None:
    """`./gradlew build` alone is no signal, so the parent counts as only delegating and takes its child's kotlin."""
    parent = Spec(title="parent").turn("build, then fix what fails", bash("./gradlew build", "BUILD FAILED in 2s"), task("fix the build"))
    child = Spec(parent_id=parent.id).turn("fix the build", edit(f"{P}/src/main/kotlin/App.kt"))
    got = classify_specs(tmp_path, parent, child)
    assert got[parent.id].languages == {"kotlin"} and got[child.id].languages == {"kotlin"}
