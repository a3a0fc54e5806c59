"""Forge's model server: llama.cpp's own server engine for batching and prompt caches, Forge's protocol on top.

    python -m forge_assets.deploy.forge_server --config server.json --host 127.0.0.1 --port 8100

Two layers in one process:

- **The engine** is llama.cpp's C++ server (``tools/server``) as the prebuilt ``xllamacpp`` wheel (CPU, Metal, CUDA;
  nothing to compile). One engine per base GGUF holds the base once, with ``parallel`` slots over one unified KV
  cache: concurrent requests are batched (continuous batching), each slot keeps its own prompt cache, and every
  language's LoRA GGUF is loaded once at scale 0 and switched on per request (the engine's ``lora`` field), so an
  agent session in one language does not evict the cached prefix of a session in another. The engine listens on a
  random loopback port with a random key only this process knows.
- **Forge's front** (FastAPI, all I/O async: nothing blocks the event loop) is what clients reach through the
  router. It adds what Forge promises on top of the engine: stable tags and ``<prefix>-<language>[:latest]``
  aliases chosen by ``model``; chat rendered with the exact template training used (``forge_assets.chat``) and Qwen
  ``<tool_call>`` blocks returned as OpenAI ``tool_calls``, streamed or not; FIM in the base family's tokens
  (``/v1/completions`` with ``suffix``, llama.cpp's native ``/completion`` with ``input_suffix``, Tabby's
  ``/lang/<language>/completion``), and 400 ``fim_not_supported`` for a base without FIM tokens; ``/apply-template``;
  each tag's generation settings from forge.yaml (``deploy.system``, ``deploy.parameters``, ``deploy.languages``: the
  entry's ``generation``) as the defaults of a request that omits them, shown by ``GET /props?model=TAG``.

Why not llama-cpp-python's server (Forge's server until issue 20): it holds one llama.cpp context behind a lock, so
four agent sessions evicted each other's prompt prefixes on every turn (4.6x slower than the engine, ``bench/serving.py``).

Defences for a LAN bind (``guard``): API keys (``Authorization: Bearer`` or ``x-api-key``; ``/health`` stays open), a
Host-header allow-list (DNS rebinding), JSON-only POSTs (a browser's CORS-simple ``text/plain`` POST is refused), a
body-size limit, a ``max_tokens`` cap, a per-request deadline, and generation cancelled when the client goes away
(the engine stops decoding when its connection closes). ``/docs`` and ``/openapi.json`` are off and no absolute path
is shown.

Config (JSON): ``{"n_ctx": 32768, "threads": 2, "gpu_layers": "auto", "parallel": 4, "api_key_file": null,
"allowed_hosts": ["localhost", ...], "max_body_bytes": 16777216, "max_tokens_cap": 4096, "request_timeout": 600,
"models": [{"id": "forge-python:abc", "language": "python", "gguf": "/…/base-Q8_0.gguf", "lora": "/…/adapter-F16.gguf"
| null, "chat_template": "…", "generation": {"system": "…" | null, "parameters": {"temperature": 0.2, …}}}]}``
(``generation``: settings.Generation.as_dict(); an entry without it, from a server deployed before it, has no defaults:
greedy decoding and no system prompt added).

Per-tag defaults: a request that omits ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repeat_penalty``, ``max_tokens``
(``n_predict``) or ``stop`` gets its tag's (``stop`` strings are added to the template's own stop tokens); a field the
request sends wins. A chat request without a system message gets the tag's system prompt as its first message
(``/v1/chat/completions`` and ``/apply-template``); completion and FIM requests get the sampling defaults only.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from forge_assets.chat import FIM_PREFIX, STOP_TOKENS, TOOL_CALL_OPEN, ChatTemplateError, parse_tool_calls, render_chat
from forge_assets.fim_tokens import FAMILIES, FimScheme, scheme_of_gguf
from forge_assets.files import free_port

NO_FIM_MESSAGE = "this model's tokenizer has no fill-in-the-middle tokens; use chat or plain completion"
DEFAULTS = {"parallel": 4, "max_body_bytes": 16 << 20, "max_tokens_cap": 4096, "request_timeout": 600.0}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "localhost.localdomain")
# Sampling fields with the same name in a request (OpenAI's plus llama.cpp's extensions), forge.yaml's deploy.parameters
# and llama.cpp's /completion; a tag without settings, and a request that sends none, gets GREEDY (Forge's default
# before per-tag settings) and the engine's own defaults for the others.
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
GREEDY = {"temperature": 0.0, "top_p": 1.0}
# The engine's generation_settings a native /completion response shows (as llama-server's): no paths, no grammar.
SHOWN_SETTINGS = ("n_predict", "seed", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                  "presence_penalty", "frequency_penalty", "stop")


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type/code and a message that says the fix."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forge-server: {msg}", file=sys.stderr, flush=True)


def gpu_layers(setting) -> int:
    """`auto`: every layer on the GPU where the engine has one (CUDA, Metal; none on a CPU build), else the number."""
    if setting in (None, "auto"):
        return -1
    return int(setting)


class Engine:
    """llama.cpp's server engine (``xllamacpp.Server``) for one base GGUF and the LoRA GGUFs trained on it."""

    def __init__(self, path: str, loras: list[str], *, n_ctx: int, parallel: int, threads: int, gpu_layers: int):
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = path
        # As Ollama's OLLAMA_NUM_PARALLEL: every slot may hold a full context (an agent prompt is 7-20k tokens), so the
        # KV cache is parallel x n_ctx tokens, one pool (kv_unified) with each slot capped at n_ctx.
        p.n_ctx = n_ctx * parallel
        p.kv_unified_per_slot = n_ctx
        p.n_parallel = parallel
        p.kv_unified = True
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.n_gpu_layers = gpu_layers
        p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(lora, 0.0) for lora in loras]
        p.lora_init_without_apply = True  # every adapter at scale 0 unless a request switches it on
        p.cache_prompt = True
        p.endpoint_metrics = True
        p.hostnames = ["127.0.0.1"]
        p.port = free_port("127.0.0.1")
        self.key = secrets.token_urlsafe(24)
        p.api_keys = [self.key]
        self.path, self.n_ctx, self.parallel = path, n_ctx, parallel
        self.lora_ids = {lora: i for i, lora in enumerate(loras)}
        self.server = xllamacpp.Server(p)  # loads the model and starts the engine's HTTP threads
        self.url = f"http://127.0.0.1:{p.port}"
        self.fim = scheme_of_gguf(Path(path))
        # The context a request really gets: llama.cpp caps a slot at the GGUF's trained context_length.
        import urllib.request

        req = urllib.request.Request(f"{self.url}/props", headers={"Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            props = json.loads(resp.read())
        settings = props.get("default_generation_settings") or {}
        self.n_ctx_slot = int(settings.get("n_ctx") or n_ctx)
        params = settings.get("params") if isinstance(settings.get("params"), dict) else settings
        self.defaults = {k: params[k] for k in SAMPLING if k in params}  # the engine's own, for a key nobody sets


@dataclass
class LoadedModel:
    id: str
    language: str | None
    base: Engine
    adapter: str | None  # the LoRA GGUF applied for this model (None: the base or a merged GGUF alone)
    chat_template: str | None
    scale: float = 1.0
    generation: dict | None = None  # the entry's settings.Generation.as_dict(); None: no defaults (greedy, no system)

    @property
    def system(self) -> str | None:
        """The system prompt a chat request without one gets (None: nothing is added)."""
        return (self.generation or {}).get("system") or None

    @property
    def parameters(self) -> dict:
        """The tag's sampling defaults (forge.yaml's deploy.parameters keys that are set)."""
        return dict((self.generation or {}).get("parameters") or {})

    @property
    def lora(self) -> list[dict]:
        """The engine's per-request adapter field: this model's adapter on, every other one off."""
        return [{"id": i, "scale": (self.scale if path == self.adapter else 0.0)} for path, i in self.base.lora_ids.items()]


class ModelServer:
    """The models of a config on their engines; generation for a named model (plain code, testable without HTTP)."""

    def __init__(self, config: dict):
        self.config = config
        self.n_ctx = int(config.get("n_ctx", 32768))
        threads = int(config.get("threads") or os.cpu_count() or 2)
        self.parallel = int(config.get("parallel") or DEFAULTS["parallel"])
        self.max_tokens_cap = int(config.get("max_tokens_cap") or DEFAULTS["max_tokens_cap"])
        self.request_timeout = float(config.get("request_timeout") or DEFAULTS["request_timeout"])
        self.max_body_bytes = int(config.get("max_body_bytes") or DEFAULTS["max_body_bytes"])
        self.allowed_hosts = [h.lower() for h in (config.get("allowed_hosts") or LOOPBACK_NAMES)]
        key_file = config.get("api_key_file")
        self.api_keys = [k.strip() for k in Path(key_file).read_text().splitlines() if k.strip()] if key_file else []
        if key_file and not self.api_keys:
            raise RuntimeError(f"the API key file {key_file} is empty. Fix: redeploy with `forge run` (it writes a key).")
        layers = gpu_layers(config.get("gpu_layers", "auto"))
        self.bases: dict[str, Engine] = {}
        self.models: dict[str, LoadedModel] = {}
        entries = config["models"]
        for path in dict.fromkeys(str(e["gguf"]) for e in entries):
            loras = list(dict.fromkeys(str(e["lora"]) for e in entries if e.get("lora") and str(e["gguf"]) == path))
            t0 = time.time()
            self.bases[path] = engine = Engine(path, loras, n_ctx=self.n_ctx, parallel=self.parallel, threads=threads,
                                               gpu_layers=layers)
            _log(f"engine for {Path(path).name} with {len(loras)} adapter(s), {self.parallel} slots of {self.n_ctx} tokens each, "
                 f"up in {time.time() - t0:.1f}s; FIM: "
                 + (f"{engine.fim.label} tokens" if engine.fim.has_fim else f"none ({engine.fim.skip_reason})"))
        capped = min(e.n_ctx_slot for e in self.bases.values())
        if capped < self.n_ctx:
            _log(f"context {self.n_ctx} capped to {capped} tokens: the base's trained context (llama.cpp serves no more)")
            self.n_ctx = capped
        for entry in entries:
            adapter = str(entry["lora"]) if entry.get("lora") else None
            self.models[entry["id"]] = LoadedModel(entry["id"], entry.get("language"), self.bases[str(entry["gguf"])], adapter,
                                                   entry.get("chat_template"), float(entry.get("scale", 1.0)),
                                                   _generation(entry))
        if not self.models:
            raise RuntimeError("the server config lists no models")
        for m in self.models.values():  # compile each template now (and import its renderer), not on the first request
            render_chat([{"role": "user", "content": "x"}], add_generation_prompt=True, template=m.chat_template)
        # Stable names: `<prefix>-<language>` and `<prefix>-<language>:latest` name whatever version is served now,
        # so a client configuration keeps working across deploys (as Ollama's :latest does).
        self.aliases: dict[str, str] = {}
        for mid in self.models:
            family = mid.split(":", 1)[0]
            for alias in (family, f"{family}:latest"):
                if alias not in self.models:
                    self.aliases[alias] = mid
        self._client = None

    # -- model selection -----------------------------------------------------------------------------------------

    def model(self, name: str | None) -> LoadedModel:
        if name in self.models:
            return self.models[name]
        if name in self.aliases:
            return self.models[self.aliases[name]]
        if not name and len(self.models) == 1:
            return next(iter(self.models.values()))
        raise RequestError(404, f"The model `{name}` does not exist on this server. It serves: {', '.join(self.models)}. "
                                "Fix: set `model` to one of them (`forge status` lists the deployed tags).", "model_not_found", "model")

    def props_model(self, name: str | None) -> LoadedModel:
        """The tag `GET /props?model=` names (a tag or alias; 404 otherwise); without one, the only tag, else 400."""
        if not name and len(self.models) > 1:
            raise RequestError(400, f"this server serves {len(self.models)} tags ({', '.join(self.models)}); /props needs one. "
                                    f"Fix: ask GET /props?model=<tag>, e.g. /props?model={next(iter(self.models))}.",
                               "model_required", "model")
        return self.model(name)

    def by_language(self, language: str) -> LoadedModel:
        for m in self.models.values():
            if m.language == language:
                return m
        raise RequestError(404, f"No model for language `{language}` on this server (it serves "
                                f"{', '.join(sorted({m.language or '?' for m in self.models.values()}))}).", "model_not_found")

    # -- generation ------------------------------------------------------------------------------------------------

    def client(self):
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        return self._client

    def budget(self, max_tokens: int | None, m: LoadedModel) -> int:
        """The tokens a request may generate: its max_tokens, at most the server's cap; 400 when it exceeds the context."""
        if max_tokens is not None and max_tokens >= self.n_ctx:
            raise RequestError(400, f"max_tokens {max_tokens} is more than {m.id}'s context of {self.n_ctx} tokens. Fix: lower "
                                    "max_tokens, or deploy with a larger deploy.context in forge.yaml.", "context_length_exceeded",
                               "max_tokens")
        return min(max_tokens or self.max_tokens_cap, self.max_tokens_cap)

    def sampling(self, m: LoadedModel, body: dict) -> dict:
        """The engine's sampling fields for a request to m: each the request's when it sends it, else m's tag default
        (forge.yaml), else GREEDY's; a key none of them sets is left to the engine."""
        tag = m.parameters
        out = {}
        for key in SAMPLING:
            v = body.get(key)
            if v is None:
                v = tag.get(key, GREEDY.get(key))
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise RequestError(400, f"{key} must be a number, not {v!r}.", param=key)
            if v is not None:
                out[key] = int(v) if key == "top_k" else float(v)
        return out

    def max_tokens(self, m: LoadedModel, body: dict, default: int | None) -> int | None:
        """The request's max_tokens (or max_completion_tokens, n_predict), else m's tag default (at most the server's
        cap), else `default`."""
        tag = m.parameters.get("max_tokens")
        return _max_tokens(body, min(int(tag), self.max_tokens_cap) if tag else default)

    def stops(self, m: LoadedModel, body: dict, template_stops: list[str]) -> list[str]:
        """The template's stop tokens, then the request's `stop` strings, or m's tag's when it sends none."""
        return _stops(body, template_stops, m.parameters.get("stop"))

    def props(self, m: LoadedModel) -> dict:
        """GET /props?model=TAG: as llama-server's /props, for one tag: its default generation settings (what a chat
        request that sends none is generated with: the tag's, else Forge's greedy and the engine's own), its system
        prompt, the context, the slots and the chat template."""
        from forge_assets.chat import CHAT_TEMPLATE

        tag = m.parameters
        settings = {**m.base.defaults, **self.sampling(m, {})}
        settings["n_predict"] = min(int(tag["max_tokens"]), self.max_tokens_cap) if tag.get("max_tokens") else self.max_tokens_cap
        settings["stop"] = list(tag.get("stop") or [])
        settings["n_ctx"] = self.n_ctx
        return {"model": m.id, "model_alias": m.id, "language": m.language,
                "aliases": sorted(a for a, t in self.aliases.items() if t == m.id),
                "default_generation_settings": {**settings, "params": {k: v for k, v in settings.items() if k != "n_ctx"}},
                "system_prompt": m.system, "system_source": (m.generation or {}).get("system_source") if m.system else None,
                "generation_configured": m.generation is not None, "num_ctx": tag.get("num_ctx"),
                "n_ctx": self.n_ctx, "total_slots": self.parallel, "chat_template": m.chat_template or CHAT_TEMPLATE,
                "fim": m.base.fim.label if m.base.fim is not None and m.base.fim.has_fim else None,
                "modalities": {"vision": False, "audio": False}}

    async def generate(self, m: LoadedModel, prompt: str, max_tokens: int | None, *, stop: list[str], sampling: dict | None = None,
                       seed: int | None = None) -> AsyncIterator[dict]:
        """Start generating on m's engine (errors raise RequestError before anything is streamed) and return an async
        iterator of {"text", "finish_reason"} pieces; the last has finish_reason, prompt_tokens, completion_tokens,
        cached_tokens and settings (the engine's generation_settings). `sampling`: the engine's sampling fields
        (sampling(); None: greedy). Closing the iterator (client gone, deadline) closes the engine connection, which stops
        decoding."""
        n = self.budget(max_tokens, m)
        body = {"prompt": prompt, "n_predict": n, **(GREEDY if sampling is None else sampling), "stop": stop, "stream": True,
                "cache_prompt": True, "lora": m.lora, "return_tokens": False}
        if seed is not None:
            body["seed"] = int(seed)
        client = self.client()
        req = client.build_request("POST", f"{m.base.url}/completion", json=body,
                                   headers={"Authorization": f"Bearer {m.base.key}"})
        resp = await client.send(req, stream=True)
        if resp.status_code != 200:
            raw = await resp.aread()
            await resp.aclose()
            raise self._engine_error(m, resp.status_code, raw)
        return self._pieces(resp)

    def _engine_error(self, m: LoadedModel, status: int, raw: bytes) -> RequestError:
        try:
            err = json.loads(raw).get("error") or {}
        except ValueError:
            err = {"message": raw.decode(errors="replace")[:300]}
        if err.get("type") == "exceed_context_size_error" or "context" in str(err.get("message", "")).lower():
            asked = err.get("n_prompt_tokens")
            return RequestError(400, f"This request needs {asked or 'more'} prompt tokens, more than {m.id}'s context of "
                                     f"{self.n_ctx} tokens. Fix: shorten the conversation or lower max_tokens, or deploy with a "
                                     "larger deploy.context in forge.yaml.", "context_length_exceeded", "messages")
        return RequestError(500 if status >= 500 else 400, f"the engine refused the request: {err.get('message') or status}",
                            "server_error" if status >= 500 else "invalid_request_error")

    async def _pieces(self, resp) -> AsyncIterator[dict]:
        finish, last = "length", {}
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    raise RequestError(500, f"the engine failed mid-generation: {data['error'].get('message')}", "server_error")
                if data.get("stop"):
                    last = data
                    finish = "length" if data.get("stop_type") == "limit" else "stop"
                    if data.get("content"):
                        yield {"text": data["content"], "finish_reason": None}
                    break
                yield {"text": data.get("content") or "", "finish_reason": None}
        finally:
            await resp.aclose()
        timings = last.get("timings") or {}
        shown = last.get("generation_settings") or {}
        yield {"text": "", "finish_reason": finish, "prompt_tokens": int(last.get("tokens_evaluated") or 0),
               "completion_tokens": int(last.get("tokens_predicted") or 0), "cached_tokens": int(timings.get("cache_n") or 0),
               "settings": {k: shown[k] for k in SHOWN_SETTINGS if k in shown}}

    def fim_scheme(self, m: LoadedModel) -> FimScheme:
        """m's FIM scheme; RequestError 400 `fim_not_supported` when its base has no FIM tokens."""
        scheme = m.base.fim
        if scheme is None or not scheme.has_fim:
            raise RequestError(400, f"{NO_FIM_MESSAGE} ({m.id}: {scheme.skip_reason if scheme else 'unknown FIM tokens'}).",
                               "fim_not_supported", "suffix")
        return scheme

    def fim_prompt(self, m: LoadedModel, prefix: str, suffix: str) -> str:
        """The PSM prompt for m's base: its family's prefix, suffix and middle tokens around prefix and suffix."""
        return self.fim_scheme(m).psm(prefix, suffix)

    def native_fim(self, m: LoadedModel, prompt: str) -> str | None:
        """A native prompt that is already FIM (any family's prefix token in it) in m's base's tokens (Forge's canonical
        Qwen tokens rewritten); None when it is plain text. 400 when the base has no FIM tokens."""
        if not any(f.prefix in prompt for f in FAMILIES.values()):
            return None
        scheme = self.fim_scheme(m)
        return scheme.to_base(prompt) if FIM_PREFIX in prompt and scheme.family.prefix not in prompt else prompt

    def chat_prompt(self, m: LoadedModel, body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` must be a non-empty list of {role, content} objects.", param="messages")
        tools = body.get("tools") if body.get("tool_choice") != "none" else None
        if m.system and not any(isinstance(x, dict) and x.get("role") in ("system", "developer") for x in messages):
            messages = [{"role": "system", "content": m.system}, *messages]  # the tag's system prompt (forge.yaml)
        try:
            return render_chat(messages, add_generation_prompt=True, tools=tools or None, template=m.chat_template)
        except ChatTemplateError as exc:
            raise RequestError(400, str(exc), param="messages") from None


def _stops(body: dict, defaults: list[str], tag: list[str] | None = None) -> list[str]:
    """defaults (the template's stop tokens), then the request's `stop` (a string or a list), or `tag`'s when the request
    sends none (a request's own stop list, even empty, replaces the tag's)."""
    stop = body.get("stop")
    if stop is None:
        extra = list(tag or [])
    elif isinstance(stop, str):
        extra = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        extra = stop
    else:
        raise RequestError(400, f"stop must be a string or a list of strings, not {stop!r}.", param="stop")
    return defaults + [s for s in dict.fromkeys(extra) if s and s not in defaults]


def _generation(entry: dict) -> dict | None:
    """An entry's generation settings ({"system", "parameters", "system_source"}), checked; None when it has none."""
    gen = entry.get("generation")
    if gen is None:
        return None
    if not isinstance(gen, dict) or not isinstance(gen.get("parameters") or {}, dict) or \
            not isinstance(gen.get("system"), (str, type(None))):
        raise RuntimeError(f"the server config's entry {entry.get('id')} has a malformed `generation` ({gen!r}): it must be "
                           "{\"system\": str | null, \"parameters\": {...}}. Fix: redeploy with `forge run`.")
    return gen


def _max_tokens(body: dict, default: int | None) -> int | None:
    v = body.get("max_completion_tokens", body.get("max_tokens", body.get("n_predict", default)))
    if v is None or (isinstance(v, int) and v < 0):
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v == 0:
        raise RequestError(400, f"max_tokens must be a positive integer, not {v!r}.", param="max_tokens")
    return v


def _held_back(text: str) -> int:
    """How many trailing characters might be the start of a `<tool_call>` tag (not streamed yet)."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


def _host_of(header: str) -> str:
    """The host name of a Host header, without its port (``[::1]:8088`` -> ``::1``), lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    """ASGI middleware: Host allow-list, API key, JSON-only POSTs and a body-size limit, before any route runs."""

    OPEN = ("/health",)

    def __init__(self, app, server: ModelServer):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        s, path = self.server, scope.get("path", "")
        host = _host_of(headers.get("host", ""))
        if "*" not in s.allowed_hosts and host not in s.allowed_hosts:
            return await self._refuse(send, 403, "host_not_allowed", f"the Host header `{host}` is not one this server answers "
                                      "to (a DNS-rebinding guard). Fix: reach it by a name in deploy.allowed_hosts, or add "
                                      "this name to deploy.allowed_hosts in forge.yaml.")
        if s.api_keys and path not in self.OPEN:
            given = headers.get("authorization", "")
            given = given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-api-key", "").strip()
            if not any(hmac.compare_digest(given.encode(), k.encode()) for k in s.api_keys):
                return await self._refuse(send, 401, "invalid_api_key", "a valid API key is required (`Authorization: Bearer "
                                          "<key>`). Fix: use the key `forge client-config` writes into your client's config "
                                          "(it is in deployment/_endpoint/api_key on the serving machine).")
        if scope.get("method") == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return await self._refuse(send, 415, "unsupported_media_type", f"POST bodies must be `application/json`, not "
                                          f"`{ctype or 'none'}` (browsers' cross-site form and text posts are refused).")
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
                return await self._refuse(send, 413, "request_too_large", self._too_large())
            seen = 0

            async def limited():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body") or b"")
                    if seen > s.max_body_bytes:
                        raise _TooLarge()
                return message

            try:
                return await self.app(scope, limited, send)
            except _TooLarge:
                return await self._refuse(send, 413, "request_too_large", self._too_large())
        return await self.app(scope, receive, send)

    def _too_large(self) -> str:
        return (f"the request body is larger than {self.server.max_body_bytes} bytes. Fix: shorten the conversation, or raise "
                "deploy.max_body_mb in forge.yaml.")

    @staticmethod
    async def _refuse(send, status: int, code: str, message: str) -> None:
        _log(f"refused {status} {code}: {message[:120]}")
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(server: ModelServer):
    app = FastAPI(title="Forge model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, server=server)

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error" if exc.status < 500 else "server_error",
                                       "param": exc.param, "code": exc.code}}, status_code=exc.status)

    async def read(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise RequestError(400, "the request body is not JSON.") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object.")
        return body

    def sse(events: AsyncIterator[dict | str]) -> StreamingResponse:
        async def lines():
            async for e in events:
                yield f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}\n\n"
        return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def timed(pieces: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """pieces until the request deadline; then a final piece with finish_reason "deadline" (the engine stops)."""
        deadline = asyncio.get_running_loop().time() + server.request_timeout
        it = pieces.__aiter__()
        produced = 0  # the engine streams one token a piece
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    piece = await asyncio.wait_for(it.__anext__(), max(left, 0.001))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    _log(f"deadline: generation stopped after {server.request_timeout:.0f}s (deploy.request_timeout_s)")
                    yield {"text": "", "finish_reason": "length", "prompt_tokens": 0, "completion_tokens": produced, "deadline": True}
                    return
                produced += bool(piece["text"])
                yield piece
        finally:
            await it.aclose()

    async def collect(request: Request, pieces: AsyncIterator[dict]) -> tuple[str, dict]:
        """All of a non-streamed generation; stops (and the engine with it) when the client disconnects."""

        async def run():
            text, last = "", {}
            async for piece in timed(pieces):
                text += piece["text"]
                last = piece
            return text, last

        task = asyncio.ensure_future(run())
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                task.cancel()
                _log("client disconnected: generation cancelled")
                raise RequestError(499, "the client closed the connection", "client_closed")
        return task.result()

    def logged(kind: str, m: LoadedModel, t0: float, usage: dict, finish: str | None, calls: int = 0, last: dict | None = None) -> None:
        cached = (last or {}).get("cached_tokens")
        _log(f"{kind} {m.id}: {usage.get('prompt_tokens')} prompt ({cached or 0} cached) + {usage.get('completion_tokens')} "
             f"completion tokens, finish {finish}{f', {calls} tool call(s)' if calls else ''}, {time.time() - t0:.2f}s")

    @app.exception_handler(RequestError)
    async def _request_error(_request, exc: RequestError):
        _log(f"{'ERROR' if exc.status >= 500 else 'refused'} {exc.status} {exc.code}: {exc}")
        return error(exc)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/props")
    async def props(model: str | None = None):
        """llama-server's GET /props for one tag (?model=TAG, or none when the server serves one tag)."""
        return server.props(server.props_model(model))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_card(m, server) for m in server.models.values()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read(request)
        m = server.model(body.get("model"))
        prompt = await asyncio.to_thread(server.chat_prompt, m, body)
        gen = await server.generate(m, prompt, server.max_tokens(m, body, None), stop=server.stops(m, body, STOP_TOKENS),
                                    sampling=server.sampling(m, body), seed=body.get("seed"))
        cid, created, t0 = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.time()
        tools_on = bool(body.get("tools")) and body.get("tool_choice") != "none"
        if not body.get("stream"):
            text, last = await collect(request, gen)
            content, calls = parse_tool_calls(text, body.get("tools")) if tools_on else (text, [])
            usage = _usage(last)
            finish = "tool_calls" if calls else last["finish_reason"]
            logged("chat", m, t0, usage, finish, len(calls), last)
            message = {"role": "assistant", "content": content if (content or not calls) else None}
            if calls:
                message["tool_calls"] = calls
            return {"id": cid, "object": "chat.completion", "created": created, "model": m.id,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}], "usage": usage}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            def chunk(delta: dict, finish: str | None = None) -> dict:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": m.id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

            yield chunk({"role": "assistant", "content": ""})
            text, sent, last = "", 0, {}
            try:
                async for piece in timed(gen):
                    text += piece["text"]
                    last = piece
                    if piece["finish_reason"]:
                        break
                    # Stream text as it comes, but not what may be (the start of) a tool call.
                    cut = text.find(TOOL_CALL_OPEN) if tools_on else -1
                    safe = cut if cut >= 0 else len(text) - (_held_back(text) if tools_on else 0)
                    if safe > sent:
                        yield chunk({"content": text[sent:safe]})
                        sent = safe
            except RequestError as exc:
                _log(f"ERROR {exc}")
                yield {"error": {"message": str(exc), "code": exc.code}}
                return
            content, calls = parse_tool_calls(text, body.get("tools")) if tools_on else (text, [])
            if calls:
                rest = text[sent:text.find(TOOL_CALL_OPEN)] if TOOL_CALL_OPEN in text[sent:] else ""
                if rest.strip():
                    yield chunk({"content": rest})
                for i, call in enumerate(calls):
                    yield chunk({"tool_calls": [{"index": i, **call}]})
            elif len(text) > sent:
                yield chunk({"content": text[sent:]})
            usage = _usage(last)
            finish = "tool_calls" if calls else last.get("finish_reason", "stop")
            logged("chat stream", m, t0, usage, finish, len(calls), last)
            final = chunk({}, finish)
            if include_usage:
                yield final
                yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": m.id, "choices": [], "usage": usage}
            else:
                yield {**final, "usage": usage}
            yield "[DONE]"

        return sse(events())

    @app.post("/apply-template")
    async def apply_template(request: Request):
        """llama-server's POST /apply-template: the exact prompt a chat request becomes, for checking templates."""
        body = await read(request)
        m = server.model(body.get("model"))
        return {"prompt": await asyncio.to_thread(server.chat_prompt, m, body), "model": m.id}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read(request)
        m = server.model(body.get("model"))
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise RequestError(400, "`prompt` must be one string (batches are not served).", param="prompt")
            prompt = prompt[0]
        suffix = body.get("suffix")
        fim = suffix is not None
        text_in = server.fim_prompt(m, str(prompt), str(suffix)) if fim else str(prompt)
        gen = await server.generate(m, text_in, server.max_tokens(m, body, 16),
                                    stop=server.stops(m, body, m.base.fim.stop_tokens() if fim else STOP_TOKENS),
                                    sampling=server.sampling(m, body), seed=body.get("seed"))
        cid, created, t0 = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.time()

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        if not body.get("stream"):
            text, last = await collect(request, gen)
            usage = _usage(last)
            logged("fim" if fim else "completion", m, t0, usage, last["finish_reason"], last=last)
            return {"id": cid, "object": "text_completion", "created": created, "model": m.id,
                    "choices": [choice(text, last["finish_reason"])], "usage": usage}

        async def events():
            last = {}
            async for piece in timed(gen):
                last = piece
                if piece["text"] or piece["finish_reason"]:
                    out = {"id": cid, "object": "text_completion", "created": created, "model": m.id,
                           "choices": [choice(piece["text"], piece["finish_reason"])]}
                    if piece["finish_reason"]:
                        out["usage"] = _usage(piece)
                    yield out
            logged("fim stream" if fim else "completion stream", m, t0, _usage(last), last.get("finish_reason"), last=last)
            yield "[DONE]"

        return sse(events())

    async def native(request: Request, m: LoadedModel | None):
        """llama-server's POST /completion: {prompt, n_predict, temperature, stream, stop} -> {content, stop, ...}."""
        body = await read(request)
        m = m or server.model(body.get("model"))
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise RequestError(400, "`prompt` must be a string.", param="prompt")
        suffix = body.get("input_suffix", body.get("suffix"))
        if suffix is not None:  # llama-server's infill fields: the prefix is input_prefix, then prompt
            prompt, fim = server.fim_prompt(m, str(body.get("input_prefix", "")) + prompt, str(suffix)), True
        else:
            fim_text = server.native_fim(m, prompt)
            prompt, fim = (fim_text, True) if fim_text is not None else (prompt, False)
        gen = await server.generate(m, prompt, server.max_tokens(m, body, None),
                                    stop=server.stops(m, body, m.base.fim.stop_tokens() if fim else STOP_TOKENS),
                                    sampling=server.sampling(m, body), seed=body.get("seed"))
        t0 = time.time()
        if not body.get("stream"):
            text, last = await collect(request, gen)
            logged("native", m, t0, _usage(last), last["finish_reason"], last=last)
            return {"content": text, "model": m.id, "stop": True, "stop_type": "limit" if last["finish_reason"] == "length" else "eos",
                    "tokens_evaluated": last["prompt_tokens"], "tokens_predicted": last["completion_tokens"],
                    "generation_settings": last.get("settings") or {}}

        async def events():
            last = {}
            async for piece in timed(gen):
                last = piece
                yield {"content": piece["text"], "stop": bool(piece["finish_reason"]), "model": m.id}
            logged("native stream", m, t0, _usage(last), last.get("finish_reason"), last=last)

        return sse(events())

    @app.post("/completion")
    async def completion_native(request: Request):
        return await native(request, None)

    @app.post("/lang/{language}/completion")
    async def completion_language(language: str, request: Request):
        return await native(request, server.by_language(language))

    return app


def _usage(last: dict) -> dict:
    p, c = int(last.get("prompt_tokens") or 0), int(last.get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _card(m: LoadedModel, server: ModelServer) -> dict:
    """A /v1/models entry: file names only (no absolute path leaves the server)."""
    return {"id": m.id, "object": "model", "created": 0, "owned_by": "forge",
            "meta": {"language": m.language, "context": server.n_ctx, "base": Path(m.base.path).name,
                     "adapter": Path(m.adapter).name if m.adapter else None,
                     "aliases": sorted(a for a, t in server.aliases.items() if t == m.id)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge-server")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    config = json.loads(Path(args.config).read_text())
    try:
        server = ModelServer(config)
    except Exception as exc:  # noqa: BLE001 - the first line of the log must say why the server did not start
        _log(f"ERROR cannot start: {exc}")
        return 1
    _log(f"serving {', '.join(server.models)} on {args.host}:{args.port}"
         + (" (API key required)" if server.api_keys else ""))
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
