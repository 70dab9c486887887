"""The `openai` SDK against `state-pack serve` on the real default model."""

# A cache hit leaves the engine at most this many tokens of the stored history to run
# again: the previous reply's last sampled token (never run through the model) and the one
# more token mistral.rs always runs on a hit (docs/SERVER.md, ARCHITECTURE.md).
TAIL = 2

SYSTEM = "You are a terse assistant for a law firm. Answer in one short sentence."
QUESTIONS = [
    "What is an indemnity clause?",
    "And a waiver?",
    "Which of the two caps liability?",
    "Give one example of a cap.",
    "What is a notice period?",
    "How long is it usually?",
    "What are damages?",
    "Name one kind of damages.",
    "Is that the same as a penalty?",
    "Summarize our talk in one line.",
]


def test_ten_turns_resending_the_history_prefill_only_the_new_turns(server):
    client = server.openai()
    messages = [{"role": "system", "content": SYSTEM}]
    previous = None
    for n, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question})
        raw = client.chat.completions.with_raw_response.create(
            model=server.model, messages=messages, max_tokens=24
        )
        answer = raw.parse()
        usage = answer.usage
        sp = answer.model_extra["state_pack"]
        cached = usage.prompt_tokens_details.cached_tokens
        assert cached == usage.prompt_tokens - sp["prefilled"]
        assert raw.headers["x-state-pack-cached-tokens"] == str(cached)
        assert raw.headers["x-state-pack-state"] == sp["state"]
        seq, digest = raw.headers["x-state-pack-receipt"].split(":")
        assert sp["receipts"][-1]["seq"] == int(seq) and sp["receipts"][-1]["hash"] == digest
        if previous is not None:
            # The whole previous turn was found stored, and the engine ran only the new turn.
            assert sp["matched_tokens"] >= previous.prompt_tokens, (n, sp)
            assert cached >= previous.prompt_tokens - TAIL, (n, usage, previous)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        previous = usage


def test_a_streamed_answer_equals_the_non_streamed_one(server):
    client = server.openai()
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name three colors."},
    ]
    whole = client.chat.completions.create(model=server.model, messages=messages, max_tokens=120)
    # Another max_tokens: a different request, computed by the engine, not repeated from the
    # store (greedy decoding stops at the same end-of-turn token well before either limit).
    assert whole.choices[0].finish_reason == "stop", whole
    chunks = list(
        client.chat.completions.create(
            model=server.model,
            messages=messages,
            max_tokens=121,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3, "arrives in pieces"
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.choices[0].finish_reason == "stop"
    assert final.model_extra["state_pack"]["engine_called"] is True
    assert final.model_extra["state_pack"]["replay_of"] is None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_clause",
        "description": "Look up the text of a contract clause by its number.",
        "parameters": {
            "type": "object",
            "properties": {"clause": {"type": "string"}},
            "required": ["clause"],
        },
    },
}


def test_a_tool_call_round_trip(server):
    client = server.openai()
    messages = [
        {"role": "system", "content": "You are a legal assistant. Use the tools."},
        {"role": "user", "content": "What does clause 14.5 say?"},
    ]
    first = client.chat.completions.create(
        model=server.model,
        messages=messages,
        tools=[LOOKUP],
        tool_choice="required",
        parallel_tool_calls=False,  # one call: a small model would repeat it up to the limit
        max_tokens=60,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup_clause"
    import json

    assert isinstance(json.loads(call.function.arguments), dict)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Liability is capped at 12 months of fees."})
    second = client.chat.completions.create(
        model=server.model, messages=messages, tools=[LOOKUP], tool_choice="none", max_tokens=60
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.tool_calls is None
    assert isinstance(second.choices[0].message.content, str)
    # The call the server generated was found stored: the history continues from it.
    stored = first.model_extra["state_pack"]["tokens"]["state"]
    assert second.model_extra["state_pack"]["matched_tokens"] == stored
    assert second.model_extra["state_pack"]["matched_state"] == first.model_extra["state_pack"]["state"]


def test_structured_output_follows_the_schema(server):
    client = server.openai()
    schema = {
        "type": "object",
        "properties": {"clause": {"type": "string", "maxLength": 40}, "risk": {"enum": ["low", "high"]}},
        "required": ["clause", "risk"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Rate the risk of an unlimited indemnity clause."}],
        response_format={"type": "json_schema", "json_schema": {"name": "rating", "schema": schema}},
        max_tokens=60,
    )
    import json

    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"clause", "risk"} and value["risk"] in ("low", "high")


def test_errors_reach_the_sdk_as_its_own_exceptions(server):
    import openai
    import pytest

    client = server.openai()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}], n=2)
    assert e.value.code == "invalid_parameters"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="not-a-token-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert [m.id for m in client.models.list()] == [server.model]
