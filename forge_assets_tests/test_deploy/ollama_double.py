"""OllamaTestDouble: a stand-in for an Ollama server, which cannot be installed here.

It follows Ollama's documented HTTP API for what Forge uses (blobs, create, chat, generate, copy,
tags, delete) and really generates with llama.cpp from the uploaded GGUF, honouring the `stop` and
`num_ctx` parameters, so a model created without proper stop tokens prints them as real Ollama does.

Like Ollama it refuses a chat that offers tools when the model's TEMPLATE does not use `.Tools`, and a
generate with a `suffix` when it does not use `.Suffix` ("does not support tools/insert"). Prompts are
rendered by `render(template, values)`: values are Ollama's template inputs, {"messages", "tools"} or
{"prompt", "suffix"}. The default renders Forge's Qwen2.5 TEMPLATE through its proven Jinja equivalent
(test_ollama_template.py executes the TEMPLATE with Go and compares), other templates by a ChatML
substitution; tests pass a Go-backed `render` to execute the TEMPLATE itself. Every rendered prompt is
kept in `prompts`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from pathlib import Path


class OllamaTestDouble:
    """Serves Ollama's API on 127.0.0.1:<port>; `blobs`, `models`, `requests`, `bodies` and `prompts` are open
    for assertions (`bodies`: the JSON bodies of create/chat/generate, in order)."""

    def __init__(self, folder: Path, fail_create: bool = False, render: Callable[[str, dict], str] | None = None):
        self.folder = folder
        self.fail_create = fail_create
        self.render_values = render or self.default_render
        self.blobs: dict[str, Path] = {}
        self.models: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, dict]] = []
        self.prompts: list[str] = []
        self._llms: dict[tuple[str, int], object] = {}
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding") == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def do_HEAD(self):
                double.requests.append(("HEAD", self.path))
                digest = self.path.removeprefix("/api/blobs/")
                self.send_response(200 if digest in double.blobs else 404)
                self.end_headers()

            def do_GET(self):
                double.requests.append(("GET", self.path))
                if self.path == "/api/tags":
                    return self._json(200, {"models": [{"name": n, "model": n, "digest": m["digest"], "size": m["size"],
                                                        "modified_at": "2026-01-01T00:00:00Z"} for n, m in double.models.items()]})
                self._json(404, {"error": "not found"})

            def do_DELETE(self):
                double.requests.append(("DELETE", self.path))
                name = json.loads(self._body() or b"{}").get("model")
                if double.models.pop(name, None) is None:
                    return self._json(404, {"error": f"model '{name}' not found"})
                self._json(200, {})

            def do_POST(self):
                double.requests.append(("POST", self.path))
                if self.path.startswith("/api/blobs/"):
                    digest = self.path.removeprefix("/api/blobs/")
                    data = self._body()
                    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                        return self._json(400, {"error": "digest mismatch"})
                    path = double.folder / digest.replace(":", "-")
                    path.write_bytes(data)
                    double.blobs[digest] = path
                    self.send_response(201)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.loads(self._body() or b"{}")
                if self.path in ("/api/create", "/api/chat", "/api/generate"):
                    double.bodies.append((self.path, body))
                if self.path == "/api/create":
                    return self._create(body)
                if self.path == "/api/chat":
                    return self._chat(body)
                if self.path == "/api/generate":
                    return self._generate(body)
                if self.path == "/api/copy":
                    if body.get("source") not in double.models:
                        return self._json(404, {"error": f"model '{body.get('source')}' not found"})
                    double.models[body["destination"]] = dict(double.models[body["source"]])
                    return self._json(200, {})
                self._json(404, {"error": "not found"})

            def _create(self, body: dict) -> None:
                if "modelfile" in body and "files" not in body:
                    return self._json(400, {"error": "neither 'from' or 'files' was specified"})
                if double.fail_create:
                    return self._json(500, {"error": "simulated failure while creating the model"})
                files = body.get("files") or {}
                adapters = body.get("adapters") or {}
                missing = [d for d in [*files.values(), *adapters.values()] if d not in double.blobs]
                if not files or missing:
                    return self._json(400, {"error": f"blob(s) not found: {missing}"})
                digest = next(iter(files.values()))
                double.models[body["model"]] = {"digest": digest, "size": double.blobs[digest].stat().st_size,
                                                "template": body.get("template"), "parameters": body.get("parameters") or {},
                                                "system": body.get("system"), "adapters": adapters}
                if body.get("stream", True):
                    lines = [{"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}]
                    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._json(200, {"status": "success"})

            def _model(self, body: dict) -> dict | None:
                model = double.models.get(body.get("model"))
                if model is None:
                    self._json(404, {"error": f"model '{body.get('model')}' not found, try pulling it first"})
                return model

            def _complete(self, model: dict, body: dict, values: dict) -> dict | None:
                """Render and generate; None after answering an error (a template that cannot render: HTTP 500)."""
                params = {**model["parameters"], **(body.get("options") or {})}
                try:
                    prompt = double.render_values(model["template"] or "", values)
                except Exception as exc:  # a template error, as Ollama reports it
                    self._json(500, {"error": f"template: {exc}"})
                    return None
                double.prompts.append(prompt)
                llm = double.llm(model["digest"], int(params.get("num_ctx", 2048)))
                max_tokens = int(params.get("num_predict", 32))
                tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
                keep = max(1, llm.n_ctx() - max_tokens)
                if len(tokens) > keep:  # Ollama's runner truncates a prompt longer than the context, keeping its end
                    tokens = tokens[-keep:]
                out = llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stop=params.get("stop") or [])
                choice = out["choices"][0]
                return {"model": body["model"], "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "done": True,
                        "text": choice["text"], "done_reason": "stop" if choice["finish_reason"] == "stop" else "length"}

            def _able(self, body: dict, asked: object, marker: str, refusal: str) -> dict | None:
                """The request's model, unless it is unknown or (when `asked`) its template lacks `marker`: then the
                answer (404, or Ollama's 400 `refusal`) is sent and None returned."""
                model = self._model(body)
                if model is not None and asked and marker not in (model["template"] or ""):
                    self._json(400, {"error": refusal})
                    return None
                return model

            def _chat(self, body: dict) -> None:
                model = self._able(body, body.get("tools"), ".Tools", "does not support tools")
                if model is None:
                    return None
                out = self._complete(model, body, {"messages": body.get("messages") or [], "tools": body.get("tools")})
                if out is not None:
                    text = out.pop("text")
                    self._json(200, {**out, "message": {"role": "assistant", "content": text}})

            def _generate(self, body: dict) -> None:
                model = self._able(body, body.get("suffix"), ".Suffix", "does not support insert")
                if model is None:
                    return None
                if body.get("prompt") and body.get("suffix"):
                    values = {"prompt": body["prompt"], "suffix": body["suffix"]}
                else:
                    system = body.get("system") or model.get("system")
                    values = {"messages": ([{"role": "system", "content": system}] if system else [])
                              + [{"role": "user", "content": body.get("prompt") or ""}], "tools": None}
                out = self._complete(model, body, values)
                if out is not None:
                    self._json(200, {**out, "response": out.pop("text")})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def default_render(template: str, values: dict) -> str:
        """Forge's Qwen2.5 TEMPLATE through its Jinja equivalent (proven by executing it with Go in
        test_ollama_template.py); any other template through `render`'s ChatML substitution."""
        from forge_assets.deploy import ollama_target

        if "suffix" in values:
            if ollama_target.FIM_BRANCH not in template:
                raise ValueError("the template has no FIM branch")
            return ollama_target.FIM_BRANCH.replace("{{ .Prompt }}", values["prompt"]).replace("{{ .Suffix }}", values["suffix"])
        if template in (ollama_target.qwen25_template(fim=True), ollama_target.qwen25_template(fim=False)):
            from transformers.utils.chat_template_utils import render_jinja_template

            messages, tools = ollama_target.ollama_view(values["messages"], values.get("tools"))
            prefill = bool(messages) and messages[-1]["role"] == "assistant"  # Ollama continues a last assistant turn
            rendered, _ = render_jinja_template([messages], tools=tools or None, chat_template=ollama_target.QWEN25_CHAT_TEMPLATE,
                                                add_generation_prompt=not prefill, continue_final_message=prefill)
            return rendered[0]
        return OllamaTestDouble.render(template, values["messages"])

    @staticmethod
    def render(template: str, messages: list[dict]) -> str:
        """Renders the subset of Go templates that ChatML TEMPLATEs use ({{ range .Messages }} … {{ .Role }} {{ .Content }})."""
        if "{{- range .Messages }}" not in template:
            return "".join(m["content"] for m in messages)
        head, _, rest = template.partition("{{- range .Messages }}")
        body, _, tail = rest.partition("{{ end }}")
        system = head.split("{{ end }}")[-1] if "{{ end }}" in head else ""
        turns = "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages)
        return system + turns + tail

    def llm(self, digest: str, num_ctx: int = 2048):
        """llama.cpp on the blob, with num_ctx capped at the model's trained context as Ollama caps it."""
        import gguf

        reader = gguf.GGUFReader(self.blobs[digest])
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        n_ctx = min(num_ctx, int(field.parts[-1][0])) if field is not None else num_ctx
        if (digest, n_ctx) not in self._llms:
            from forge_assets.export.gguf_export import load_llama

            self._llms[(digest, n_ctx)] = load_llama(self.blobs[digest], n_ctx=n_ctx)
        return self._llms[(digest, n_ctx)]

    def __enter__(self) -> "OllamaTestDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
