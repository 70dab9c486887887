#!/usr/bin/env python3
"""A stateless OpenAI client on state-pack: every turn re-sends the whole conversation, as
the `openai` SDK, LangChain and LangGraph do, and the server prefills only the new turn.

    export STATE_PACK_TOKENS="me:$(openssl rand -hex 24)"
    cargo run --release -- serve --addr 127.0.0.1:8080 &        # the default model
    pip install openai                                            # tests/python/requirements.txt pins a version
    STATE_PACK_TOKEN="${STATE_PACK_TOKENS#me:}" python3 examples/openai/chat.py

Prints per turn the prompt tokens sent, how many the server did not recompute
(`usage.prompt_tokens_details.cached_tokens`, as measured), how much of the history it found
stored, and the signed receipt of the answer.
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("STATE_PACK_URL", "http://127.0.0.1:8080") + "/v1",
    api_key=os.environ["STATE_PACK_TOKEN"],
)
model = client.models.list().data[0].id
messages = [{"role": "system", "content": "You are a terse assistant for a law firm."}]
for question in ["What is an indemnity clause?", "And a waiver?", "Which one caps liability?"]:
    messages.append({"role": "user", "content": question})
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=40)
    reply = answer.choices[0].message.content
    messages.append({"role": "assistant", "content": reply})
    usage, sp = answer.usage, answer.model_extra["state_pack"]
    print(f"> {question}\n{reply}")
    print(
        f"  prompt {usage.prompt_tokens} tokens, {usage.prompt_tokens_details.cached_tokens} not recomputed; "
        f"{sp['matched_tokens']} matched a stored state; receipt #{sp['receipts'][-1]['seq']}\n"
    )
