"""A scripted model output for the Forge server's own tests, and a chat asked both ways (not a test module)."""

import json


def scripted_generate(answer: str, step: int):
    """A ModelServer.generate that streams `answer` in pieces of `step` characters, then stops (10 prompt tokens,
    20 completion tokens): the server's own parsing and streaming run on a known model output."""

    async def generate(m, prompt, max_tokens, **kw):
        async def pieces():
            for i in range(0, len(answer), step):
                yield {"text": answer[i:i + step], "finish_reason": None}
            yield {"text": "", "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20}
        return pieces()

    return generate


def chat_both_ways(client, body: dict) -> tuple[dict, str, list[dict], str | None]:
    """POST body to /v1/chat/completions as it is and streamed: (the answer, the streamed text content, the streamed
    tool-call deltas, the last streamed event's finish_reason)."""
    out = client.post("/v1/chat/completions", json=body).json()
    lines = client.post("/v1/chat/completions", json={**body, "stream": True}).text.splitlines()
    events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    calls = [c for e in events if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls", [])]
    return out, content, calls, events[-1]["choices"][0]["finish_reason"]
