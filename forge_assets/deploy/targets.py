"""The deploy targets (llama.cpp, Ollama, mlx-lm, vLLM), each described once behind one interface.

A `DeployTarget` says everything the rest of Forge needs to know about one way of serving the tags:

- client facts, read by `clients` to write OpenCode, Continue and Tabby configurations: the Tabby completion kind,
  where Tabby's completion endpoint is, Continue's provider and apiBase, whether the endpoint's base URL is the
  OpenAI-style ``.../v1``, a note for the Tabby config, whether Forge runs the server on this machine;
- operations, used by `service` (deploy_gguf, served), `cli` (`forge status`, `forge stop`, `forge rollback`):
  ``deploy`` (start and smoke-test a gguf version's tag; the deployment record), ``health`` (whether a deployed tag
  still answers), ``served`` (what clients can reach), ``stop`` (stop what Forge started), ``describe`` (the
  fields `forge status` shows for a language's deployment record) and ``errors`` (what a failed deploy raises).

`TARGETS` maps each name (forge.yaml's ``deploy.target``, `config.DeployConfig.target`) to its object and
`target(name)` looks one up with an error naming the valid ones. The URLs each client is given:

- ``llama-server``: OpenCode and Continue (provider ``openai``) use ``<base>/v1``; Tabby completion is
  ``llama.cpp/completion`` at ``<server root>/lang/<language>`` (Forge's server answers llama.cpp's native
  ``/completion`` there with that language's adapter, since Tabby sends no model name).
- ``ollama``: OpenCode uses ``<host>/v1``; Continue provider ``ollama`` at ``<host>/``; Tabby completion is
  ``ollama/completion`` at ``<host>``.
- ``mlx-lm``: OpenCode and Continue (provider ``openai``) use ``<base>/v1``; Tabby completion is
  ``openai/legacy_completion_no_fim`` at ``<base>/v1`` (`clients` says why).
- ``vllm``: OpenCode and Continue (provider ``openai``) use ``<base>/v1``; Tabby completion is ``vllm/completion``
  at ``<base>/v1``; each tag is a LoRA module name.

This module imports only the standard library at its top (config.py reads `TARGET_NAMES` from it); the serving
modules (llama_server, ollama_target, mlx_target, vllm_target, service) are imported inside the methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from forge_assets.files import free_port
from forge_assets.private import private_umask

if TYPE_CHECKING:
    from forge_assets.artifacts import Artifact, ArtifactStore
    from forge_assets.deploy.clients import Endpoint

Log = Callable[[str], object]

MLX_STATE = "mlx.json"  # deployment/<language>/mlx.json: that language's mlx_lm.server


def _quiet(_: str) -> None:
    return None


class DeployTarget:
    """One way of serving the tags. Subclasses set the class attributes and implement deploy (and what differs)."""

    name: ClassVar[str]
    # ---- client facts (clients.py)
    tabby_completion_kind: ClassVar[str]  # Tabby's model.completion.http kind
    continue_provider: ClassVar[str] = "openai"  # Continue's provider for every model
    openai_base_url: ClassVar[bool] = True  # Endpoint.base_url must be the OpenAI-style base ending in /v1
    tabby_note: ClassVar[str | None] = None  # a comment line for the Tabby config
    # ---- export (export/plan.py)
    serves_merged_only: ClassVar[bool] = False  # one merged GGUF per language, never a LoRA GGUF on a shared base
    runs_here: ClassVar[bool] = True  # Forge starts the server on this machine (vLLM: a plan for a GPU machine)
    one_language_per_server: ClassVar[bool] = False  # a client config names one language's server (mlx-lm)

    def __repr__(self) -> str:
        return f"<deploy target {self.name}>"

    # ------------------------------------------------------------------------------------------ client facts

    def continue_api_base(self, served: Endpoint) -> str:
        """Continue's apiBase (it resolves paths against it, hence the trailing slash)."""
        return f"{served.openai_base}/"

    def tabby_completion_endpoint(self, served: Endpoint, language: str) -> str:
        """Tabby completion's api_endpoint for language's tag."""
        return served.openai_base

    # ------------------------------------------------------------------------------------------ operations

    def deploy(self, store: ArtifactStore, cfg, language: str, gguf: Artifact, tag: str, log: Log) -> dict:
        """Serve gguf as tag, smoke-test it and return the deployment record (service.deploy_gguf writes it)."""
        raise NotImplementedError

    def health(self, store: ArtifactStore, cfg, language: str, tag: str) -> bool:
        """Whether language's deployed tag still answers (a reusable deployment is redeployed when not)."""
        return True

    def served(self, store: ArtifactStore, cfg, extra: dict | None = None, language: str | None = None) -> Endpoint:
        """What clients can reach now, from each language's promoted deployment record (plus `extra` not yet written)."""
        from forge_assets.artifacts import ArtifactError
        from forge_assets.deploy import clients
        from forge_assets.deploy.service import MIN_CONTEXT, _read_json

        d = cfg.deploy
        records = {}
        for lang in store.languages("deployment"):  # not the shared endpoint's folder, nor lock files
            dep = store.promoted("deployment", lang)
            if dep is not None:
                records[lang] = _read_json(dep.path / "deployment.json")
        records.update(extra or {})
        models = []
        for lang, rec in sorted(records.items()):
            if rec.get("target") != self.name or (self.one_language_per_server and lang != (language or lang)):
                continue
            ctx = int(rec.get("context") or d.context or MIN_CONTEXT)
            models.append(clients.ServedModel(rec.get("client_model") or rec["tag"], lang, ctx, min(d.max_output, ctx // 2),
                                              fim=rec.get("fim") or "qwen",  # records from before FIM schemes were Qwen's
                                              generation=rec.get("generation")))
            if self.one_language_per_server:
                break  # one server per language: a client config names one of them
        if not models:
            raise ArtifactError(f"no language is deployed to {self.name} yet. Fix: run `forge run`.")
        return clients.Endpoint(self.name, self.client_base_url(cfg, records[models[0].language]), models)

    def client_base_url(self, cfg, record: dict) -> str:
        """The base URL clients are given, from the (first) served language's record."""
        return record["endpoint"]

    def stop(self, store: ArtifactStore, cfg, languages: list[str] | None = None, log: Log = _quiet) -> list[str]:
        """Stop what Forge started for this target (all, or the named languages'); each line is also passed to log."""
        return []

    def describe(self, store: ArtifactStore, language: str, record: dict | None) -> dict:
        """The fields `forge status` adds to language's row for its deployment record (at least ``health``)."""
        return {}

    def errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions a deploy raises when the tag cannot be served (`forge rollback` reports them)."""
        return ()


class LlamaServerTarget(DeployTarget):
    """Every language on one Forge model server (llama.cpp behind the Forge router): the base once + one LoRA each,
    blue-green with its smoke test; through the Forge service's supervisor when one runs (`forge service install`)."""

    name = "llama-server"
    tabby_completion_kind = "llama.cpp/completion"
    tabby_note = ("# llama.cpp/completion posts to <api_endpoint>/completion with no model name; Forge's server answers "
                  "/lang/<language>/completion with that language's adapter.")

    def tabby_completion_endpoint(self, served: Endpoint, language: str) -> str:
        return f"{served.server_root}/lang/{language}"  # Forge's server: llama.cpp's /completion for that language's tag

    def deploy(self, store, cfg, language, gguf, tag, log):
        from forge_assets.deploy import llama_server, supervisor
        from forge_assets.deploy.service import _with, context_for, endpoint_dir, model_entry, server_options

        d = cfg.deploy
        state_dir = endpoint_dir(store)
        entry = model_entry(gguf, tag, language, cfg)  # with the tag's generation settings (per-tag defaults)
        self._retire_legacy(store, d, log, only_port=d.port)  # a per-language server on deploy.port must make way (once)
        n_ctx, options = context_for(gguf, d), server_options(store, d)
        if supervisor.running(state_dir):  # `forge service install`: the service's supervisor deploys, its children serve
            state = supervisor.submit(state_dir, supervisor.request(tag, d.host, d.port, entry, n_ctx=n_ctx,
                                                                    gpu_layers=d.gpu_layers, options=options))
            log("deployed through the Forge service (`forge service status`); it keeps serving across reboots")
        else:
            state = llama_server.deploy(None, tag, d.host, d.port, state_dir, n_ctx=n_ctx, gpu_layers=d.gpu_layers,
                                        models=lambda previous: _with(previous, entry), options=options)
        self._retire_legacy(store, d, log)  # the rest once the one server answers for every language
        record = {"target": self.name, "tag": tag, "endpoint": state["endpoint"], "gguf": gguf.version, "smoke": state["smoke"],
                  "tags": state["tags"], "context": state["n_ctx"], "unmerged": entry["lora"] is not None}
        log(f"{tag} serves on {state['endpoint']} with {', '.join(t for t in state['tags'] if t != tag) or 'no other tag'} "
            f"from one server (context {state['n_ctx']}, {'base + LoRA' if entry['lora'] else 'merged GGUF'}).")
        return record

    @staticmethod
    def _retire_legacy(store, d, log, only_port: int | None = None) -> None:
        """Stop servers of deployments made before one server held every language (deployment/<language>/server.json);
        with only_port, just the one whose endpoint is on that port."""
        from forge_assets.deploy import llama_server
        from forge_assets.deploy.service import ENDPOINT

        for state_file in sorted((store.root / "deployment").glob(f"*/{llama_server.STATE}")):
            if state_file.parent.name == ENDPOINT:
                continue
            if only_port is not None and (llama_server.read_state(state_file.parent) or {}).get("port") != only_port:
                continue
            stopped = llama_server.stop(state_file.parent)
            if stopped:
                log(f"stopped the per-language server of {stopped.get('tag')} on {stopped.get('endpoint')}: every language now serves "
                    f"from one server on port {d.port}")

    def health(self, store, cfg, language, tag):
        from forge_assets.deploy import llama_server
        from forge_assets.deploy.service import endpoint_dir

        return llama_server.serving(endpoint_dir(store), tag)

    def served(self, store, cfg, extra=None, language=None):
        """Every tag on the one server, from its state (deployment/_endpoint/server.json)."""
        from forge_assets.artifacts import ArtifactError
        from forge_assets.deploy import clients, llama_server
        from forge_assets.deploy.service import MIN_CONTEXT, _entry_fim, endpoint_dir

        d = cfg.deploy
        state = llama_server.read_state(endpoint_dir(store))
        if not state or not state.get("models"):
            raise ArtifactError("nothing is deployed on Forge's server yet. Fix: run `forge run` (it deploys every language).")
        ctx = int(state.get("n_ctx") or MIN_CONTEXT)
        models = [clients.ServedModel(m["id"], m["language"], ctx, min(d.max_output, ctx // 2), fim=_entry_fim(m),
                                      generation=m.get("generation"))
                  for m in state["models"] if m.get("language")]
        return clients.Endpoint(self.name, state["endpoint"], models, api_key=llama_server.key_of(state.get("options")))

    def stop(self, store, cfg, languages=None, log=_quiet):
        """The one server (deployment/_endpoint) and any per-language server from before it, with their routers."""
        from forge_assets.deploy import llama_server
        from forge_assets.deploy.service import ENDPOINT

        root = store.root / "deployment"
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            log(line)

        langs = languages or sorted(p.name for p in root.glob("*") if (p / llama_server.STATE).is_file())
        if languages and (root / ENDPOINT / llama_server.STATE).is_file():
            say(f"every language is served by one server ({root / ENDPOINT}); `forge stop` without --language stops it")
        for lang in langs:
            stopped = llama_server.stop(root / lang)
            if stopped is None:
                say(f"{lang}: no llama.cpp deployment recorded; nothing to stop")
                continue
            say(f"{lang}: {stopped['tag']} on {stopped['endpoint']}: " + "; ".join(stopped["messages"]) + "; record cleared")
        return lines

    def describe(self, store, language, record):
        """Health over HTTP of the server serving language's tag: the one server (with every tag it serves), or a
        per-language server from before it."""
        from forge_assets.deploy import llama_server
        from forge_assets.deploy.service import endpoint_dir

        shared = endpoint_dir(store)
        state_dir = store.folder("deployment", language)
        if record and record.get("target") == self.name and record.get("tags"):
            state_dir = shared  # served with every other language from the one server
        h = llama_server.health(state_dir)
        row: dict = {"health": h["health"]}
        if state_dir == shared:
            row["endpoint_tags"] = h.get("models") or []
        if h["tag"] and record and record.get("tag") not in (h.get("models") or [h["tag"]]):
            row["serving"] = {"tag": h["tag"], "endpoint": h["endpoint"]}
        return row

    def errors(self):
        from forge_assets.deploy import llama_server

        return (llama_server.DeployError,)


class OllamaTarget(DeployTarget):
    """A merged GGUF per language, created as an Ollama tag (and <prefix>-<language>:latest) and smoke-tested."""

    name = "ollama"
    tabby_completion_kind = "ollama/completion"
    continue_provider = "ollama"
    openai_base_url = False  # Ollama's host, with or without /v1
    serves_merged_only = True  # its Qwen templates need the merged model

    def continue_api_base(self, served):
        return f"{served.server_root}/"

    def tabby_completion_endpoint(self, served, language):
        return served.server_root

    def deploy(self, store, cfg, language, gguf, tag, log):
        from forge_assets.deploy import ollama_target
        from forge_assets.deploy.service import context_for, generation_settings, gguf_path

        d = cfg.deploy
        model_file = gguf_path(gguf)
        state = ollama_target.deploy(model_file, tag, gguf.path, d.ollama_host, latest_tag=f"{d.tag_prefix}-{language}:latest",
                                     num_ctx=context_for(gguf, d), generation=generation_settings(cfg, language, gguf))
        return {"target": self.name, "tag": tag, "endpoint": state["endpoint"], "gguf": gguf.version, "smoke": state["smoke"],
                "latest_tag": state["latest_tag"], "context": state.get("num_ctx"), "generation": state["generation"],
                "modelfile": state["modelfile"]}

    # health: Ollama keeps its tags (the base's True)

    def client_base_url(self, cfg, record):
        return cfg.deploy.ollama_host

    def describe(self, store, language, record):
        from forge_assets.deploy import ollama_target

        return {"health": ollama_target.health(record["endpoint"], record["tag"])["health"]}

    def errors(self):
        from forge_assets.deploy import ollama_target

        return (ollama_target.OllamaDeployError,)


class MlxTarget(DeployTarget):
    """mlx_lm.server per language (base + --adapter-path), on its own port: it reloads the whole model whenever a
    request names another adapter. State: deployment/<language>/mlx.json."""

    name = "mlx-lm"
    tabby_completion_kind = "openai/legacy_completion_no_fim"
    tabby_note = "# mlx_lm.server ignores the OpenAI 'suffix' field, so Tabby renders the base's FIM prompt itself (the no-FIM kind)."
    one_language_per_server = True

    def deploy(self, store, cfg, language, gguf, tag, log):
        """mlx_lm.server for this language, started, smoke-tested, then the old one stopped (deploy.port + the
        language's index, remembered in deployment/ports.json)."""
        from forge_assets.deploy import llama_server, mlx_target
        from forge_assets.deploy.ports import port_for
        from forge_assets.deploy.service import MIN_CONTEXT, _read_json, _trained_from, generation_settings

        d = cfg.deploy
        base_dir, adapter_dir = _trained_from(store, gguf)
        gen = generation_settings(cfg, language, gguf)
        state_dir = store.folder("deployment", language)
        previous = _read_json(state_dir / MLX_STATE) or None
        port = port_for(store.root, language, d.port)
        if previous and mlx_target.health(previous)["ok"] and previous.get("port") == port:
            port = free_port(llama_server.UPSTREAM_HOST)  # blue-green needs the new server up before the old one stops
        work = state_dir / f"mlx-{gguf.version[:12]}"
        rec = mlx_target.start(base_dir, {language: adapter_dir}, d.host, port, work / "server.log", generation=gen)
        try:
            smoke = mlx_target.smoke(rec)
        except Exception:
            mlx_target.stop(rec)
            raise
        if previous:
            log(mlx_target.stop(previous))
        private_umask()
        (state_dir / MLX_STATE).write_text(json.dumps(rec, indent=2, default=str))
        return {"target": self.name, "tag": tag, "endpoint": rec["endpoint"], "gguf": gguf.version, "smoke": smoke,
                "request_fields": rec.get("requests", {}).get(language), "context": d.context or MIN_CONTEXT,
                "client_model": mlx_target.DEFAULT_MODEL, "generation": gen.as_dict(),
                "request_defaults": rec.get("request_defaults")}  # mlx_lm.server's name for --model with its --adapter-path

    def _state(self, store, language: str) -> dict | None:
        from forge_assets.deploy.service import _read_json

        return _read_json(store.folder("deployment", language) / MLX_STATE) or None

    def health(self, store, cfg, language, tag):
        from forge_assets.deploy import mlx_target

        return mlx_target.health(self._state(store, language))["ok"]

    def stop(self, store, cfg, languages=None, log=_quiet):
        from forge_assets.deploy import mlx_target

        lines: list[str] = []
        for mlx_state in sorted((store.root / "deployment").glob(f"*/{MLX_STATE}")):
            if not languages or mlx_state.parent.name in languages:
                lines.append(f"{mlx_state.parent.name}: {mlx_target.stop(json.loads(mlx_state.read_text()))}; record cleared")
                log(lines[-1])
                mlx_state.unlink()
        return lines

    def describe(self, store, language, record):
        from forge_assets.deploy import mlx_target

        mlx_state = store.folder("deployment", language) / MLX_STATE
        return {"health": mlx_target.health(json.loads(mlx_state.read_text()) if mlx_state.is_file() else None)["health"]}


class VllmTarget(DeployTarget):
    """A `vllm serve` command and --lora-modules manifest for every language deployed so far (vLLM is not run here:
    it needs a GPU machine); each tag is a LoRA module name."""

    name = "vllm"
    tabby_completion_kind = "vllm/completion"
    runs_here = False

    def deploy(self, store, cfg, language, gguf, tag, log):
        from forge_assets.deploy import vllm_target
        from forge_assets.deploy.service import MIN_CONTEXT, _read_json, _trained_from, generation_settings
        from forge_assets.deploy.settings import Generation

        d = cfg.deploy
        base_dir, adapter_dir = _trained_from(store, gguf)
        adapters, gens = {}, {}
        for lang in store.languages("deployment"):
            dep = store.promoted("deployment", lang) if lang != language else None
            rec = _read_json(dep.path / "deployment.json") if dep else {}
            if rec.get("target") == self.name and rec.get("adapter_path") and Path(rec["adapter_path"]).is_dir():
                adapters[rec["tag"]] = Path(rec["adapter_path"])
                if rec.get("generation"):
                    gens[rec["tag"]] = Generation(**rec["generation"])
        adapters[tag] = adapter_dir
        gens[tag] = generation_settings(cfg, language, gguf)
        plan = vllm_target.plan(str(base_dir), adapters, d.host, d.port, context=d.context, generation=gens)
        command = vllm_target.command_line(plan)
        log(f"vLLM cannot run on this machine; on a GPU machine serve every language with:\n{command}")
        return {"target": self.name, "tag": tag, "endpoint": plan["manifest"]["endpoint"], "gguf": gguf.version,
                "adapter_path": str(adapter_dir), "command": command, "manifest": plan["manifest"],
                "context": d.context or MIN_CONTEXT, "runs_here": self.runs_here, "generation": gens[tag].as_dict()}

    # health: a vLLM plan is a file (the base's True); stop: Forge started nothing

    def describe(self, store, language, record):
        return {"health": f"not run by Forge (vLLM needs a GPU); start it with: {record.get('command')}"}


TARGETS: dict[str, DeployTarget] = {t.name: t for t in (LlamaServerTarget(), OllamaTarget(), MlxTarget(), VllmTarget())}
TARGET_NAMES: tuple[str, ...] = tuple(TARGETS)
DEFAULT_TARGET = LlamaServerTarget.name


class UnknownTargetError(ValueError):
    """A deploy target name that is none of TARGET_NAMES."""


def target(name: str) -> DeployTarget:
    """The target called name, or UnknownTargetError naming the valid ones."""
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise UnknownTargetError(f"unknown deploy target {name!r}; expected one of {', '.join(TARGET_NAMES)} "
                                 "(forge.yaml's deploy.target)") from None


def of_record(record: dict | None) -> DeployTarget:
    """The target that made a deployment record; records without a known target were made by Forge's llama.cpp
    server (before the target was recorded)."""
    name = (record or {}).get("target")
    return TARGETS.get(name, TARGETS[DEFAULT_TARGET]) if isinstance(name, str) else TARGETS[DEFAULT_TARGET]


def deploy_errors() -> tuple[type[BaseException], ...]:
    """Every exception a target's deploy raises when a tag cannot be served."""
    return tuple(dict.fromkeys(e for t in TARGETS.values() for e in t.errors()))
