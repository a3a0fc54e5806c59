"""OllamaTestDouble: a stand-in for an Ollama server, which cannot be installed here.

It follows Ollama's documented HTTP API for what Forge uses (blobs, create, chat, copy, tags,
delete) and really generates with llama.cpp from the uploaded GGUF, honouring the `stop`
parameter, so a model created without proper stop tokens prints them as real Ollama does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class OllamaTestDouble:
    """Serves Ollama's API on 127.0.0.1:<port>; `blobs`, `models` and `requests` are open for assertions."""

    def __init__(self, folder: Path, fail_create: bool = False):
        self.folder = folder
        self.fail_create = fail_create
        self.blobs: dict[str, Path] = {}
        self.models: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._llms: dict[str, object] = {}
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
                if self.path == "/api/create":
                    return self._create(body)
                if self.path == "/api/chat":
                    return self._chat(body)
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
                missing = [d for d in files.values() if d not in double.blobs]
                if not files or missing:
                    return self._json(400, {"error": f"blob(s) not found: {missing}"})
                digest = next(iter(files.values()))
                double.models[body["model"]] = {"digest": digest, "size": double.blobs[digest].stat().st_size,
                                                "template": body.get("template"), "parameters": body.get("parameters") or {}}
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

            def _chat(self, body: dict) -> None:
                model = double.models.get(body.get("model"))
                if model is None:
                    return self._json(404, {"error": f"model '{body.get('model')}' not found, try pulling it first"})
                params = {**model["parameters"], **(body.get("options") or {})}
                prompt = double.render(model["template"] or "", body.get("messages") or [])
                llm = double.llm(model["digest"])
                out = llm.create_completion(prompt, max_tokens=int(params.get("num_predict", 32)), temperature=0.0,
                                            stop=params.get("stop") or [])
                choice = out["choices"][0]
                self._json(200, {"model": body["model"], "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "message": {"role": "assistant", "content": choice["text"]}, "done": True,
                                 "done_reason": "stop" if choice["finish_reason"] == "stop" else "length"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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

    def llm(self, digest: str):
        if digest not in self._llms:
            from forge_assets.export.gguf_export import load_llama

            self._llms[digest] = load_llama(self.blobs[digest])
        return self._llms[digest]

    def __enter__(self) -> "OllamaTestDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
