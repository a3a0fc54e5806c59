"""A scripted model output for the Forge server's own tests (not a test module)."""


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
