"""Forge's model server: one process, one base model held once, each language's LoRA adapter applied per request.

    python -m forge_assets.deploy.forge_server --config server.json --host 127.0.0.1 --port 8100

Why not llama-cpp-python's own server: it holds one model at a time and reloads the whole model whenever a request
names another one (``LlamaProxy``), and it does not turn Qwen's ``<tool_call>`` text into OpenAI ``tool_calls``.
The real ``llama-server`` binary is not shipped by any wheel (building it adds ~20 minutes on 2 cores). This server
is a thin OpenAI-compatible layer over llama.cpp through llama-cpp-python's bindings:

- every distinct GGUF in the config is loaded once (``llama_cpp.Llama``, all layers on the GPU when llama.cpp was
  built with CUDA or Metal), and every LoRA GGUF once (``llama_adapter_lora_init``) against its base;
- a request's ``model`` picks the entry: its base, its adapter (switched on the context with
  ``llama_set_adapters_lora``; the KV cache is reset when the adapter changes) and its chat template;
- ``/v1/chat/completions`` renders messages and tools with the model's own chat template (``forge_assets.chat``,
  the template training used) and returns Qwen ``<tool_call>`` blocks as OpenAI ``tool_calls``, streamed or not;
- ``/v1/completions`` does FIM when ``suffix`` is given, in the FIM tokens of the base's family, found in the GGUF's
  vocabulary when it loads (``fim_tokens.scheme_of_llama``: Qwen's ``<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>``,
  StarCoder's ``<fim_prefix>…``, CodeLlama's ``▁<PRE>…``, DeepSeek's ``<｜fim▁begin｜>…``); a base without FIM tokens
  answers FIM requests with 400 ``fim_not_supported`` rather than a completion of garbled text;
- ``/completion`` and ``/lang/<language>/completion`` speak llama-server's native completion API (Tabby's
  ``llama.cpp/completion`` kind): a prompt already in FIM tokens (Forge's canonical Qwen ones are rewritten in the
  base's), or FIM from ``suffix`` / ``input_prefix`` + ``input_suffix`` (llama-server's infill fields);
- ``/v1/models`` and ``/health`` list every tag with its language and context; ``/apply-template`` (as llama-server)
  returns the exact prompt a chat request becomes.

Requests are served one at a time (a llama.cpp context is not thread-safe; on 2 cores batching would not help).
Each request is logged on one line; failures are logged with ERROR and answered with an OpenAI-style error body.

Config (JSON): ``{"n_ctx": 32768, "threads": 2, "gpu_layers": "auto", "models": [{"id": "forge-python:abc",
"language": "python", "gguf": "/…/base-Q8_0.gguf", "lora": "/…/adapter-F16.gguf" | null, "chat_template": "…"}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from forge_assets.export.lora_gguf import apply_lora
from forge_assets.chat import FIM_PREFIX, STOP_TOKENS, TOOL_CALL_OPEN, ChatTemplateError, parse_tool_calls, render_chat
from forge_assets.fim_tokens import FAMILIES, FimScheme, scheme_of_llama

NO_FIM_MESSAGE = "this model's tokenizer has no fill-in-the-middle tokens; use chat or plain completion"


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type/code and a message that says the fix."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forge-server: {msg}", file=sys.stderr, flush=True)


@dataclass
class Base:
    path: str
    llm: object  # llama_cpp.Llama
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: tuple | None = (None, 1.0)  # (adapter path, scale) now set on the context; (None, 1.0): the base alone
    fim: FimScheme | None = None  # the FIM tokens of the GGUF's vocabulary (fim_tokens.scheme_of_llama)


@dataclass
class Served:
    id: str
    language: str | None
    base: Base
    lora: str | None
    adapter: str | None  # the LoRA GGUF applied for this model (None: the base or a merged GGUF alone)
    chat_template: str | None
    scale: float = 1.0


def gpu_layers(setting) -> int:
    """`auto`: every layer on the GPU when llama.cpp can offload (CUDA, Metal), else none; or a number."""
    import llama_cpp

    if setting in (None, "auto"):
        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
    return int(setting)


class ModelServer:
    """The models of a config, loaded once; generation for a named model (plain code, testable without HTTP)."""

    def __init__(self, config: dict):
        import llama_cpp

        self.config = config
        self.n_ctx = int(config.get("n_ctx", 32768))
        threads = int(config.get("threads") or os.cpu_count() or 2)
        self.gpu_layers = gpu_layers(config.get("gpu_layers", "auto"))
        self.bases: dict[str, Base] = {}
        self.models: dict[str, Served] = {}
        for entry in config["models"]:
            path = str(entry["gguf"])
            if path not in self.bases:
                t0 = time.time()
                # flash attention: long agent prompts (OpenCode's is ~7k Qwen tokens) read in a fraction of the time
                llm = llama_cpp.Llama(model_path=path, n_ctx=self.n_ctx, n_threads=threads, n_gpu_layers=self.gpu_layers,
                                      verbose=False, seed=0, flash_attn=bool(config.get("flash_attn", True)))
                scheme = scheme_of_llama(llm, f"the GGUF {Path(path).name}")
                self.bases[path] = Base(path, llm, fim=scheme)
                _log(f"loaded {path} (n_ctx {self.n_ctx}, gpu layers {self.gpu_layers}) in {time.time() - t0:.1f}s; FIM: "
                     + (f"{scheme.label} tokens" if scheme.has_fim else f"none ({scheme.skip_reason})"))
            base = self.bases[path]
            adapter = str(entry["lora"]) if entry.get("lora") else None
            if adapter:
                apply_lora(base.llm, adapter)  # loaded (and checked against its base) now, not on the first request
                apply_lora(base.llm, None)
                _log(f"loaded adapter {adapter} for {entry['id']}")
            self.models[entry["id"]] = Served(entry["id"], entry.get("language"), base, entry.get("lora"), adapter,
                                              entry.get("chat_template"), float(entry.get("scale", 1.0)))
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

    # -- model selection -----------------------------------------------------------------------------------------

    def model(self, name: str | None) -> Served:
        if name in self.models:
            return self.models[name]
        if name in self.aliases:
            return self.models[self.aliases[name]]
        if not name and len(self.models) == 1:
            return next(iter(self.models.values()))
        raise RequestError(404, f"The model `{name}` does not exist on this server. It serves: {', '.join(self.models)}. "
                                "Fix: set `model` to one of them (`forge status` lists the deployed tags).", "model_not_found", "model")

    def by_language(self, language: str) -> Served:
        for m in self.models.values():
            if m.language == language:
                return m
        raise RequestError(404, f"No model for language `{language}` on this server (it serves "
                                f"{', '.join(sorted({m.language or '?' for m in self.models.values()}))}).", "model_not_found")

    def _activate(self, m: Served) -> None:
        """Put m's adapter (or none) on its base's context (``lora_gguf.apply_lora``; it resets the KV cache)."""
        base = m.base
        if base.active == (m.adapter, m.scale):
            return
        try:
            apply_lora(base.llm, m.adapter, m.scale)
        except Exception as exc:  # noqa: BLE001 - llama.cpp refused: the request fails, the server stays up
            base.active = None
            raise RequestError(500, f"cannot switch to the adapter of {m.id}: {exc}", "server_error") from None
        base.active = (m.adapter, m.scale)

    # -- generation ------------------------------------------------------------------------------------------------

    def tokenize(self, m: Served, text: str) -> list[int]:
        return m.base.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def budget(self, prompt_tokens: int, max_tokens: int | None, m: Served) -> int:
        room = self.n_ctx - prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = f" plus max_tokens {max_tokens}" if max_tokens is not None else ""
            raise RequestError(400, f"This request needs {prompt_tokens} prompt tokens{asked}, more than {m.id}'s context of "
                                    f"{self.n_ctx} tokens. Fix: shorten the conversation or lower max_tokens, or deploy with a "
                                    "larger deploy.context in forge.yaml.", "context_length_exceeded", "messages")
        return room if max_tokens is None else max_tokens

    def generate(self, m: Served, prompt: str, max_tokens: int | None, *, stop: list[str], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> Iterator[dict]:
        """Stream {"text", "finish_reason", "prompt_tokens", "completion_tokens"} pieces; the last has finish_reason set."""
        ids = self.tokenize(m, prompt)
        n = self.budget(len(ids), max_tokens, m)
        with m.base.lock:
            self._activate(m)
            text, finish = "", "length"
            stream = m.base.llm.create_completion(ids, max_tokens=n, temperature=temperature, top_p=top_p, stop=stop, stream=True,
                                                  seed=seed)
            for chunk in stream:
                choice = chunk["choices"][0]
                text += choice.get("text") or ""
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                yield {"text": choice.get("text") or "", "finish_reason": None}
            yield {"text": "", "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(self.tokenize(m, text))}

    def fim_scheme(self, m: Served) -> FimScheme:
        """m's FIM scheme; RequestError 400 `fim_not_supported` when its base has no FIM tokens."""
        scheme = m.base.fim
        if scheme is None or not scheme.has_fim:
            raise RequestError(400, f"{NO_FIM_MESSAGE} ({m.id}: {scheme.skip_reason if scheme else 'unknown FIM tokens'}).",
                               "fim_not_supported", "suffix")
        return scheme

    def fim_prompt(self, m: Served, prefix: str, suffix: str) -> str:
        """The PSM prompt for m's base: its family's prefix, suffix and middle tokens around prefix and suffix."""
        return self.fim_scheme(m).psm(prefix, suffix)

    def native_fim(self, m: Served, prompt: str) -> str | None:
        """A native prompt that is already FIM (any family's prefix token in it) in m's base's tokens (Forge's canonical
        Qwen tokens rewritten); None when it is plain text. 400 when the base has no FIM tokens."""
        if not any(f.prefix in prompt for f in FAMILIES.values()):
            return None
        scheme = self.fim_scheme(m)
        return scheme.to_base(prompt) if FIM_PREFIX in prompt and scheme.family.prefix not in prompt else prompt

    def chat_prompt(self, m: Served, body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` must be a non-empty list of {role, content} objects.", param="messages")
        tools = body.get("tools") if body.get("tool_choice") != "none" else None
        try:
            return render_chat(messages, add_generation_prompt=True, tools=tools or None, template=m.chat_template)
        except ChatTemplateError as exc:
            raise RequestError(400, str(exc), param="messages") from None


def _stops(body: dict, defaults: list[str]) -> list[str]:
    stop = body.get("stop")
    extra = [stop] if isinstance(stop, str) else list(stop or [])
    return defaults + [s for s in extra if s not in defaults]


def _max_tokens(body: dict, default: int | None) -> int | None:
    v = body.get("max_completion_tokens", body.get("max_tokens", body.get("n_predict", default)))
    if v is None or (isinstance(v, int) and v < 0):
        return default
    if not isinstance(v, int) or v == 0:
        raise RequestError(400, f"max_tokens must be a positive integer, not {v!r}.", param="max_tokens")
    return v


def _held_back(text: str) -> int:
    """How many trailing characters might be the start of a `<tool_call>` tag (not streamed yet)."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


def create_app(server: ModelServer):
    app = FastAPI(title="Forge model server")

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error" if exc.status < 500 else "server_error",
                                       "param": exc.param, "code": exc.code}}, status_code=exc.status)

    async def read(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "the request body is not JSON.") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object.")
        return body

    def sse(events: Iterator[dict | str]) -> StreamingResponse:
        def lines():
            for e in events:
                yield f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}\n\n"
        return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def logged(kind: str, m: Served, t0: float, usage: dict, finish: str | None, calls: int = 0) -> None:
        _log(f"{kind} {m.id}: {usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion tokens, "
             f"finish {finish}{f', {calls} tool call(s)' if calls else ''}, {time.time() - t0:.2f}s")

    @app.exception_handler(RequestError)
    async def _request_error(_request, exc: RequestError):
        _log(f"{'ERROR' if exc.status >= 500 else 'refused'} {exc.status} {exc.code}: {exc}")
        return error(exc)

    @app.get("/health")
    def health():
        return {"status": "ok", "models": [_card(m, server) for m in server.models.values()]}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [_card(m, server) for m in server.models.values()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read(request)
        m = server.model(body.get("model"))
        prompt = server.chat_prompt(m, body)
        max_tokens = _max_tokens(body, None)
        server.budget(len(server.tokenize(m, prompt)), max_tokens, m)  # refuse before a stream starts
        gen = server.generate(m, prompt, max_tokens, stop=_stops(body, STOP_TOKENS), temperature=float(body.get("temperature", 0.0) or 0.0),
                              top_p=float(body.get("top_p", 1.0) or 1.0), seed=body.get("seed"))
        cid, created, t0 = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.time()
        tools_on = bool(body.get("tools")) and body.get("tool_choice") != "none"
        if not body.get("stream"):
            text, last = "", {}
            for piece in gen:
                text += piece["text"]
                last = piece
            content, calls = parse_tool_calls(text) if tools_on else (text, [])
            usage = _usage(last)
            finish = "tool_calls" if calls else last["finish_reason"]
            logged("chat", m, t0, usage, finish, len(calls))
            message = {"role": "assistant", "content": content if (content or not calls) else None}
            if calls:
                message["tool_calls"] = calls
            return {"id": cid, "object": "chat.completion", "created": created, "model": m.id,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}], "usage": usage}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events():
            def chunk(delta: dict, finish: str | None = None) -> dict:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": m.id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

            yield chunk({"role": "assistant", "content": ""})
            text, sent, last = "", 0, {}
            try:
                for piece in gen:
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
            content, calls = parse_tool_calls(text) if tools_on else (text, [])
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
            logged("chat stream", m, t0, usage, finish, len(calls))
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
        return {"prompt": server.chat_prompt(m, body), "model": m.id}

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
        max_tokens = _max_tokens(body, 16)
        server.budget(len(server.tokenize(m, text_in)), max_tokens, m)
        gen = server.generate(m, text_in, max_tokens, stop=_stops(body, m.base.fim.stop_tokens() if fim else STOP_TOKENS),
                              temperature=float(body.get("temperature", 0.0) or 0.0), top_p=float(body.get("top_p", 1.0) or 1.0),
                              seed=body.get("seed"))
        cid, created, t0 = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.time()

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        if not body.get("stream"):
            text, last = "", {}
            for piece in gen:
                text += piece["text"]
                last = piece
            usage = _usage(last)
            logged("fim" if fim else "completion", m, t0, usage, last["finish_reason"])
            return {"id": cid, "object": "text_completion", "created": created, "model": m.id,
                    "choices": [choice(text, last["finish_reason"])], "usage": usage}

        def events():
            last = {}
            for piece in gen:
                last = piece
                if piece["text"] or piece["finish_reason"]:
                    out = {"id": cid, "object": "text_completion", "created": created, "model": m.id,
                           "choices": [choice(piece["text"], piece["finish_reason"])]}
                    if piece["finish_reason"]:
                        out["usage"] = _usage(piece)
                    yield out
            logged("fim stream" if fim else "completion stream", m, t0, _usage(last), last.get("finish_reason"))
            yield "[DONE]"

        return sse(events())

    async def native(request: Request, m: Served | None):
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
        max_tokens = _max_tokens(body, None)
        server.budget(len(server.tokenize(m, prompt)), max_tokens, m)
        gen = server.generate(m, prompt, max_tokens, stop=_stops(body, m.base.fim.stop_tokens() if fim else STOP_TOKENS),
                              temperature=float(body.get("temperature", 0.0) or 0.0), seed=body.get("seed"))
        t0 = time.time()
        if not body.get("stream"):
            text, last = "", {}
            for piece in gen:
                text += piece["text"]
                last = piece
            logged("native", m, t0, _usage(last), last["finish_reason"])
            return {"content": text, "model": m.id, "stop": True, "stop_type": "limit" if last["finish_reason"] == "length" else "eos",
                    "tokens_evaluated": last["prompt_tokens"], "tokens_predicted": last["completion_tokens"]}

        def events():
            last = {}
            for piece in gen:
                last = piece
                yield {"content": piece["text"], "stop": bool(piece["finish_reason"]), "model": m.id}
            logged("native stream", m, t0, _usage(last), last.get("finish_reason"))

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


def _card(m: Served, server: ModelServer) -> dict:
    return {"id": m.id, "object": "model", "created": 0, "owned_by": "forge",
            "meta": {"language": m.language, "context": server.n_ctx, "base": m.base.path, "adapter": m.lora,
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
    _log(f"serving {', '.join(server.models)} on {args.host}:{args.port}")
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
