"""Ready-to-paste client configurations for Forge's deployed model tags: OpenCode, Continue and Tabby.

Forge serves one tag per language (``forge-python:1a2b3c4d5e6f``) behind one endpoint. `Endpoint` describes that
endpoint and its tags; `render` turns it into a client's configuration file and `write_all` writes all three::

    served = Endpoint("llama-server", "http://127.0.0.1:8088/v1",
                    [ServedModel("forge-python:1a2b3c4d5e6f", "python", context=32768, max_output=4096)])
    write_all(served, Path("clients"))   # opencode.json, continue-config.yaml, tabby-config.toml

Each target (``llama-server``, ``ollama``, ``mlx-lm``, ``vllm``) is described once in `forge_assets.deploy.targets`:
its Tabby completion kind and endpoint, Continue's provider and apiBase, whether ``base_url`` is the OpenAI-style
base ``.../v1`` (Ollama: its host, with or without ``/v1``), and a note for the Tabby config; this module reads
them from the target object (``Endpoint.deploy_target``) and names no target itself. OpenCode always uses ``<base>/v1``.

Tabby chat is always ``openai/chat`` at ``<base>/v1`` (Ollama serves an OpenAI-compatible ``/v1`` too).

Facts these rest on (checked against the clients' sources, not copied from them):

- Tabby (crates/http-api-bindings/src/completion/mod.rs): ``llama.cpp/completion`` posts the rendered
  ``prompt_template`` to ``<api_endpoint>/completion`` (no model field, so it is whatever the server root serves);
  ``vllm/completion`` and ``openai/legacy_completion_no_fim`` are the same engine: they post the rendered prompt to
  ``<api_endpoint>/completions`` with ``model_name``; ``openai/completion`` (FIM) ignores ``prompt_template`` and sends
  the suffix in the request's ``suffix`` field instead. mlx_lm.server's ``/v1/completions`` reads only ``prompt``
  (it ignores ``suffix``), so for ``mlx-lm`` Tabby renders the base's FIM prompt itself with the no-FIM kind; it is
  named ``openai/legacy_completion_no_fim`` rather than ``vllm/completion`` because mlx-lm speaks plain OpenAI
  legacy completions, not anything vLLM-specific (both kinds behave identically in Tabby).
- Continue (config-yaml's ``configYamlSchema``): models have ``name``, ``provider``, ``model``, ``apiBase``, ``roles``,
  ``capabilities``, ``promptTemplates.autocomplete`` (Handlebars, hence the triple braces) and
  ``defaultCompletionOptions``. With provider ``openai`` autocomplete renders the template and posts it raw to
  ``<apiBase>/completions``; with ``ollama`` it uses ``/api/generate`` (raw) unless the tag's TEMPLATE handles
  ``.Suffix``.
- OpenCode (1.18.33): a provider with ``npm: @ai-sdk/openai-compatible``, ``options.baseURL`` and per-model
  ``limit``/``tool_call``; ``model`` is ``<provider>/<model id>``. OpenCode drops keys it does not know silently.

FIM templates and stops follow each tag's FIM scheme (``ServedModel.fim``, from the deployment: the tokens its base
was trained with, ``forge_assets.fim_tokens``). A tag whose base has no FIM tokens gets no autocomplete model (Continue)
and no completion section (Tabby), with a comment saying why: its server would refuse FIM requests.

Each tag's generation settings (``ServedModel.generation``: deploy/settings.py's Generation, forge.yaml's
``deploy.system``/``deploy.parameters`` over which ``deploy.languages.<lang>`` wins) go into the configurations where
the client has a key for them, so the values a client sends are the tag's own (a client's own default would otherwise
win over the server's): Continue ``defaultCompletionOptions`` (temperature, topP, topK, minP, maxTokens, stop: Continue
has no repetition-penalty key) and, for a configured system prompt, ``chatOptions.baseSystemMessage``; OpenCode the
model's ``options`` (sent as request-body fields by its openai-compatible provider); Tabby's config.toml has no such
keys (a comment lists the values; the server's defaults for the tag apply). A system prompt that is the base template's own
default is not written: the server adds it when a request has none, and a client's own system prompt is more useful.

Plain code: no Dagster, no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import yaml

from forge_assets.chat import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from forge_assets.deploy.targets import TARGET_NAMES, DeployTarget
from forge_assets.deploy.targets import TARGETS as _TARGET_OBJECTS
from forge_assets.files import atomic_write
from forge_assets.fim_tokens import SCHEMES, scheme_named

Target = Literal[TARGET_NAMES]  # the names targets.TARGETS holds
Kind = Literal["opencode", "continue", "tabby"]
TARGETS: tuple[str, ...] = TARGET_NAMES
CLIENT_KINDS: tuple[str, ...] = get_args(Kind)

FILE_NAMES: dict[str, str] = {"opencode": "opencode.json", "continue": "continue-config.yaml", "tabby": "tabby-config.toml"}

PROVIDER_ID = "forge"  # OpenCode provider key: models are "forge/<tag>"
OPENCODE_SCHEMA = "https://opencode.ai/config.json"

# Qwen2.5-Coder fill-in-the-middle, in each client's own placeholder syntax (other families: continue_fim_template, tabby_fim_template).
CONTINUE_FIM_TEMPLATE = f"{FIM_PREFIX}{{{{{{prefix}}}}}}{FIM_SUFFIX}{{{{{{suffix}}}}}}{FIM_MIDDLE}"  # Handlebars {{{x}}}
TABBY_FIM_TEMPLATE = f"{FIM_PREFIX}{{prefix}}{FIM_SUFFIX}{{suffix}}{FIM_MIDDLE}"


def continue_fim_template(scheme: str = "qwen") -> str:
    """Continue's autocomplete template (Handlebars) in a FIM scheme's tokens (fim_tokens.SCHEMES, not "none")."""
    return scheme_named(scheme).psm("{{{prefix}}}", "{{{suffix}}}")


def tabby_fim_template(scheme: str = "qwen") -> str:
    """Tabby's prompt_template in a FIM scheme's tokens."""
    return scheme_named(scheme).psm("{prefix}", "{suffix}")


AUTOCOMPLETE_MAX_TOKENS = 256  # a completion is a few lines; the model's whole output budget would be slow

TABBY_COMPLETION_KIND: dict[str, str] = {name: t.tabby_completion_kind for name, t in _TARGET_OBJECTS.items()}


@dataclass(frozen=True)
class ServedModel:
    """One deployed tag: the model name clients send, its language, its context window and output budget.

    tool_call says whether the endpoint accepts OpenAI ``tools`` for this tag (OpenCode's ``tool_call``, Continue's
    ``tool_use`` capability). Keep it True for llama-server/vLLM/mlx-lm; set it False for an Ollama tag whose
    TEMPLATE has no ``.Tools`` section, since Ollama answers 400 "does not support tools" to every such request.
    """

    tag: str
    language: str
    context: int
    max_output: int
    tool_call: bool = True
    fim: str = "qwen"  # the FIM scheme of the tag's base (fim_tokens.SCHEMES); "none": no autocomplete for it
    # The tag's system prompt and sampling parameters (deploy/settings.py's Generation, or its as_dict()); None: none
    # known (a deployment recorded before them), and the configurations carry no sampling values.
    generation: object = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.generation, dict):
            from forge_assets.deploy.settings import Generation

            g = self.generation
            object.__setattr__(self, "generation", Generation(g.get("system"), dict(g.get("parameters") or {}),
                                                               g.get("system_source") or "config"))
        if self.fim not in SCHEMES:
            raise ValueError(f"ServedModel {self.tag!r}: fim must be one of {', '.join(SCHEMES)}, got {self.fim!r}")
        if not self.tag or any(c.isspace() for c in self.tag):
            raise ValueError(f"ServedModel.tag must be a non-empty name without spaces, got {self.tag!r}")
        if not self.language or any(c.isspace() or not c.isprintable() for c in self.language):
            raise ValueError(f"ServedModel {self.tag!r}: language must be a non-empty name without spaces, got {self.language!r}")
        if not self.tag.isprintable():
            raise ValueError(f"ServedModel.tag has control characters: {self.tag!r}")
        if not (0 < self.max_output < self.context):
            raise ValueError(f"ServedModel {self.tag!r}: need 0 < max_output < context, got max_output={self.max_output}, "
                             f"context={self.context}")

    @property
    def parameters(self) -> dict:
        """The tag's set sampling parameters (deploy/settings.py's PARAMETER_KEYS), {} when none are known."""
        return dict(self.generation.parameters) if self.generation is not None else {}

    @property
    def configured_system(self) -> str | None:
        """The tag's system prompt when forge.yaml sets one (deploy.system or deploy.languages.<lang>.system), else None
        (the base template's own default is the server's business)."""
        g = self.generation
        return g.system if g is not None and g.system_source != "base template" and g.system else None

    @property
    def display_name(self) -> str:
        """The tag without its version: ``forge-python:1a2b`` -> ``forge-python``."""
        return self.tag.split(":", 1)[0]


@dataclass(frozen=True)
class Endpoint:
    """An endpoint serving tags: target (which server), base_url (OpenAI-style ``.../v1``; Ollama: its host)."""

    target: str
    base_url: str
    models: list[ServedModel] = field(default_factory=list)
    api_key: str | None = None  # the endpoint's API key (a LAN bind has one): written into every client's config

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected one of {', '.join(TARGETS)}")
        if any(c.isspace() or not c.isprintable() for c in self.base_url):
            raise ValueError(f"base_url has spaces or control characters: {self.base_url!r}")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"base_url must be an http(s) URL without query or fragment, got {self.base_url!r}")
        if self.deploy_target.openai_base_url and not self.base_url.rstrip("/").endswith("/v1"):
            raise ValueError(f"{self.target}: base_url must be the OpenAI-style base ending in /v1 "
                             f"(e.g. http://127.0.0.1:8088/v1), got {self.base_url!r}")
        if not self.models:
            raise ValueError("Endpoint.models is empty: nothing is deployed")
        for what in ("tag", "language"):
            seen = [getattr(m, what) for m in self.models]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"Endpoint.models repeats {what} {', '.join(dupes)}; one tag per language")

    @property
    def deploy_target(self) -> DeployTarget:
        """The target object (targets.TARGETS) whose client facts this endpoint's configurations follow."""
        return _TARGET_OBJECTS[self.target]

    @property
    def openai_base(self) -> str:
        """``http://host:port[/prefix]/v1`` without a trailing slash (for Ollama: its OpenAI-compatible /v1)."""
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else f"{base}/v1"

    @property
    def server_root(self) -> str:
        """The server's root (llama.cpp's native ``/completion``, Ollama's ``/api``): the base without /v1."""
        base = self.base_url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    @property
    def languages(self) -> list[str]:
        return [m.language for m in self.models]

    def model_for(self, language: str | None = None) -> ServedModel:
        """The tag serving language (default: the first model); ValueError naming the deployed languages otherwise."""
        if language is None:
            return self.models[0]
        for m in self.models:
            if m.language == language:
                return m
        raise ValueError(f"no model is deployed for language {language!r}; deployed languages: "
                         f"{', '.join(sorted(self.languages))}")


def with_generation(served: Endpoint, settings: dict) -> Endpoint:
    """served with each model that has no generation settings given those of its language in settings
    ({language: deploy/settings.py's Generation}); models that have them (from their deployment) keep them."""
    from dataclasses import replace

    models = [replace(m, generation=settings[m.language]) if m.generation is None and m.language in settings else m
              for m in served.models]
    return replace(served, models=models)


def _ordered(served: Endpoint, language: str | None) -> tuple[ServedModel, list[ServedModel]]:
    """The chosen model and all models with it first (clients default to the first chat model they list)."""
    chosen = served.model_for(language)
    return chosen, [chosen] + [m for m in served.models if m is not chosen]


# --------------------------------------------------------------------------------------------------- OpenCode


def opencode_config(served: Endpoint, language: str | None = None) -> dict:
    """A project's ``opencode.json``: one openai-compatible provider with every tag; ``model`` is language's tag."""
    chosen = served.model_for(language)
    models = {}
    for m in served.models:
        models[m.tag] = {"name": m.display_name, "tool_call": m.tool_call, "limit": {"context": m.context, "output": m.max_output}}
        options = opencode_options(served, m)
        if options:
            models[m.tag]["options"] = options
    return {
        "$schema": OPENCODE_SCHEMA,
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": f"Forge ({served.target})",
                "options": {"baseURL": served.openai_base, **({"apiKey": served.api_key} if served.api_key else {})},
                "models": models,
            }
        },
        "model": f"{PROVIDER_ID}/{chosen.tag}",
        "small_model": f"{PROVIDER_ID}/{chosen.tag}",  # titles/summaries stay on the local endpoint
    }


def request_parameters(served: Endpoint, m: ServedModel) -> dict:
    """The tag's sampling parameters as request-body fields in the names its endpoint reads: OpenAI's (temperature, top_p,
    max_tokens, stop) and the llama.cpp/vLLM extensions (top_k, min_p; repeat_penalty for llama.cpp's server,
    repetition_penalty for vLLM and mlx-lm; Ollama's OpenAI API takes none of the three, its tag holds them)."""
    out = {}
    names = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "max_tokens": "max_tokens",
             "stop": "stop", "repeat_penalty": "repeat_penalty" if served.target == "llama-server" else "repetition_penalty"}
    for key, value in m.parameters.items():
        if key in names and not (served.target == "ollama" and key in ("top_k", "min_p", "repeat_penalty")):
            out[names[key]] = value
    return out


def opencode_options(served: Endpoint, m: ServedModel) -> dict:
    """OpenCode's per-model ``options`` for the tag: OpenCode 1.18 passes a model's options to its openai-compatible
    provider as provider options, which that provider copies into every request body as they are; max_tokens is left
    out (OpenCode sends its own from ``limit.output``)."""
    return {k: v for k, v in request_parameters(served, m).items() if k != "max_tokens"}


def continue_options(m: ServedModel, fim_stops: list[str] | None = None) -> dict:
    """Continue's completion options for the tag's sampling parameters (configYamlSchema's completionOptions: temperature,
    topP, topK, minP, stop; maxTokens is the caller's). With fim_stops, stop is those followed by the configured ones."""
    p = m.parameters if m.generation is not None or fim_stops is None else {"temperature": 0.2}  # an old record: as before
    out = {name: p[key] for key, name in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("min_p", "minP"))
           if key in p}
    stops = list(dict.fromkeys([*(fim_stops or []), *(p.get("stop") or [])]))
    if stops:
        out["stop"] = stops
    return out


# --------------------------------------------------------------------------------------------------- Continue


def _continue_connection(served: Endpoint) -> dict:
    key = {"apiKey": served.api_key} if served.api_key else {}
    target = served.deploy_target  # Continue resolves paths against apiBase (hence its trailing slash)
    return {"provider": target.continue_provider, "apiBase": target.continue_api_base(served), **key}


def continue_dict(served: Endpoint, language: str | None = None) -> dict:
    """Continue's ``config.yaml`` as data: chat/edit/apply per tag (language's first) and one autocomplete model."""
    chosen, ordered = _ordered(served, language)
    conn = _continue_connection(served)
    models: list[dict] = []
    for m in ordered:
        entry = {"name": f"Forge {m.language} ({m.tag})", **conn, "model": m.tag, "roles": ["chat", "edit", "apply"]}
        if m.tool_call:
            entry["capabilities"] = ["tool_use"]
        max_tokens = min(m.parameters.get("max_tokens") or m.max_output, m.max_output)
        entry["defaultCompletionOptions"] = {"contextLength": m.context, "maxTokens": max_tokens, **continue_options(m)}
        if m.configured_system is not None:
            entry["chatOptions"] = {"baseSystemMessage": m.configured_system}
        models.append(entry)
    if chosen.fim != "none":  # a base without FIM tokens: no autocomplete model (continue_config says why)
        models.append({
            "name": f"Forge {chosen.language} autocomplete ({chosen.tag})",
            **conn,
            "model": chosen.tag,
            "roles": ["autocomplete"],
            "promptTemplates": {"autocomplete": continue_fim_template(chosen.fim)},
            "defaultCompletionOptions": {
                "contextLength": chosen.context,
                "maxTokens": min(AUTOCOMPLETE_MAX_TOKENS, chosen.max_output),
                **continue_options(chosen, scheme_named(chosen.fim).stop_tokens()),
            },
        })
    return {"name": f"Forge ({served.target})", "version": "1.0.0", "schema": "v1", "models": models}


def continue_config(served: Endpoint, language: str | None = None) -> str:
    """Continue's ``config.yaml`` text (``~/.continue/config.yaml`` or a workspace's ``.continue`` config)."""
    head = (f"# Continue config for Forge's {served.target} endpoint {served.base_url}\n"
            f"# languages: {', '.join(served.languages)}\n" + _no_fim_comment(served.model_for(language))
            + "".join(f"# {m.tag}: repeat_penalty {m.parameters['repeat_penalty']} is applied by the server (Continue has no "
                      "key for it)\n" for m in served.models if "repeat_penalty" in m.parameters))
    body = yaml.safe_dump(continue_dict(served, language), sort_keys=False, allow_unicode=True, width=4096)
    return head + body


# --------------------------------------------------------------------------------------------------- Tabby


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)  # a JSON string with ASCII escapes is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {type(value).__name__}")


def tabby_dict(served: Endpoint, language: str | None = None) -> dict:
    """Tabby's ``config.toml`` as data: ``model.completion.http`` and ``model.chat.http`` for language's tag."""
    chosen, ordered = _ordered(served, language)
    target = served.deploy_target
    kind, endpoint = target.tabby_completion_kind, target.tabby_completion_endpoint(served, chosen.language)
    key = {"api_key": served.api_key} if served.api_key else {}
    chat = {"kind": "openai/chat", "model_name": chosen.tag, "api_endpoint": served.openai_base,
            "supported_models": [m.tag for m in ordered], **key}
    if chosen.fim == "none":  # a base without FIM tokens: no completion model (tabby_config says why)
        return {"model": {"chat": {"http": chat}}}
    completion = {"kind": kind, "model_name": chosen.tag, "api_endpoint": endpoint, "prompt_template": tabby_fim_template(chosen.fim),
                  **key}
    return {"model": {"completion": {"http": completion}, "chat": {"http": chat}}}


def _no_fim_comment(chosen: ServedModel) -> str:
    if chosen.fim != "none":
        return ""
    return (f"# no autocomplete (fill-in-the-middle) model: {chosen.tag} was trained on a base whose tokenizer has no FIM "
            "tokens, so its server refuses FIM requests; chat works.\n")


def tabby_config(served: Endpoint, language: str | None = None) -> str:
    """Tabby's ``~/.tabby/config.toml`` text."""
    data = tabby_dict(served, language)["model"]
    chosen = served.model_for(language)
    lines = [f"# Tabby config for Forge's {served.target} endpoint {served.base_url}",
             f"# completion and chat: {chosen.language} ({chosen.tag}); languages deployed: {', '.join(served.languages)}"]
    if chosen.fim == "none":
        lines.append(_no_fim_comment(chosen).rstrip("\n").replace("autocomplete (fill-in-the-middle)", "code completion (fill-in-the-middle)"))
    if served.deploy_target.tabby_note:
        lines.append(served.deploy_target.tabby_note)
    if chosen.generation is not None:
        values = ", ".join(f"{k} {json.dumps(v, ensure_ascii=False)}" for k, v in chosen.parameters.items()) or "none set"
        lines.append(f"# generation settings of {chosen.tag}: {values}"
                     + (f"; system prompt {json.dumps(chosen.configured_system, ensure_ascii=False)}" if chosen.configured_system else ""))
        lines.append("# Tabby's config.toml has no sampling or system-prompt keys: its requests get the server's defaults for "
                     "the tag (docs/serving.md, Generation settings).")
    for section in [s for s in ("completion", "chat") if s in data]:
        lines += ["", f"[model.{section}.http]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in data[section]["http"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- files


def render(kind: Kind, served: Endpoint, language: str | None = None) -> tuple[str, str]:
    """(file name, text) of one client's configuration."""
    if kind == "opencode":
        return FILE_NAMES[kind], json.dumps(opencode_config(served, language), indent=2) + "\n"
    if kind == "continue":
        return FILE_NAMES[kind], continue_config(served, language)
    if kind == "tabby":
        return FILE_NAMES[kind], tabby_config(served, language)
    raise ValueError(f"unknown client kind {kind!r}; expected one of {', '.join(CLIENT_KINDS)}")


def write_all(served: Endpoint, folder: Path, language: str | None = None) -> dict[str, Path]:
    """Write opencode.json, continue-config.yaml and tabby-config.toml into folder, each atomically.

    All three are rendered before any is written, so an error (e.g. an unknown language) leaves folder untouched.
    Returns {kind: path}.
    """
    rendered = {kind: render(kind, served, language) for kind in CLIENT_KINDS}
    folder = Path(folder)
    paths: dict[str, Path] = {}
    for kind, (name, text) in rendered.items():
        paths[kind] = folder / name
        atomic_write(paths[kind], text)  # 0600: an endpoint's address and key are the owner's alone
    return paths
