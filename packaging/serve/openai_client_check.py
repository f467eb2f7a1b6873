"""The official `openai` Python client against a running `versifier serve`.

    python3 packaging/serve/openai_client_check.py http://127.0.0.1:8080

Lists the models, asks for a completion and a chat completion, each plainly
and streamed, and checks the shapes the client parses (ids, model, choices,
finish_reason, usage). Prints one JSON line per check and exits 1 on the
first one that fails. Used by tests/serve_openai.rs.
"""

import json
import sys

import openai


def check(name, ok, detail):
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}, ensure_ascii=False))
    if not ok:
        sys.exit(1)


def main():
    base = sys.argv[1].rstrip("/") + "/v1"
    client = openai.OpenAI(base_url=base, api_key=sys.argv[2] if len(sys.argv) > 2 else "none")

    models = client.models.list()
    ids = [m.id for m in models.data]
    check("models", len(ids) >= 1, ids)
    model = ids[0]

    c = client.completions.create(model=model, prompt="月", max_tokens=8, seed=1)
    check(
        "completion",
        c.id and c.model and c.choices[0].text and c.choices[0].finish_reason in ("stop", "length")
        and c.usage.completion_tokens >= 1,
        c.model_dump(),
    )

    chunks = list(client.completions.create(model=model, prompt="月", max_tokens=8, seed=1, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    check(
        "completion stream",
        text == c.choices[0].text and finishes == [c.choices[0].finish_reason]
        and len({ch.id for ch in chunks}) == 1 and all(ch.model == c.model for ch in chunks),
        {"text": text, "finishes": finishes},
    )

    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "你是詩人"}, {"role": "user", "content": "寫一首關於秋夜思鄉的詩"}],
        seed=3,
    )
    poem = chat.choices[0].message.content
    check(
        "chat",
        chat.id and chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
        and poem and chat.choices[0].finish_reason in ("stop", "length"),
        chat.model_dump(),
    )

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "寫一首關於秋夜思鄉的詩"}],
        seed=3,
        stream=True,
    )
    chunks = list(stream)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    check(
        "chat stream",
        streamed == poem and finishes == [chat.choices[0].finish_reason]
        and all(ch.id == chunks[0].id and ch.model == chat.model for ch in chunks),
        {"text": streamed, "finishes": finishes},
    )


if __name__ == "__main__":
    main()
