#!/usr/bin/env python3
"""A 10-turn chat through OpenAI's /v1/chat/completions, re-sending the whole history each
turn as stateless clients do, against one or more servers side by side: per turn, the
prompt tokens sent, how many the server says it did not recompute (cached), and the turn's
latency; medians over runs.

    python3 benches/openai_chat.py \
        --server state-pack=http://127.0.0.1:8090/v1 --server llama-server=http://127.0.0.1:8080/v1 \
        --model smollm2-135m --token TOKEN --runs 3 --json benches/results/openai_chat.json

Run by hand (not in CI), with the `openai` package (tests/python/requirements.txt pins it).

Where a server's `cached` comes from is printed with it: state-pack answers
`usage.prompt_tokens_details.cached_tokens` (the prompt minus what its engine prefilled for
the request); llama-server answers `timings.cache_n` (tokens taken from its prompt cache),
and `prompt_tokens_details.cached_tokens` where its version has it.

`--rerender` sends old assistant turns the way some clients store them instead of as the
server answered them: `strip` trims surrounding whitespace, `collapse` also turns every run
of whitespace inside into one space, `newline` appends a newline (as clients that keep
replies as lines do). The summary counts the turns the re-rendering actually changed. Each run uses its own system prompt, so no run starts
from another's cache; every request is greedy.
"""

import argparse
import json
import statistics
import sys
import time

from openai import OpenAI

SYSTEM = "You are a terse assistant for a law firm (session {run}). Answer in at most two short lines."
QUESTIONS = [
    "What is an indemnity clause?",
    "And a waiver?",
    "Which of the two caps liability?",
    "Give one example of a cap.",
    "What is a notice period?",
    "How long is it usually?",
    "What are damages?",
    "List two kinds of damages.",
    "Is that the same as a penalty?",
    "Summarize our talk in one line.",
]


def rerender(text, how):
    if how == "newline":
        return text + "\n"
    if how == "strip":
        return text.strip()
    if how == "collapse":
        return " ".join(text.split())
    return text


def cached_of(raw_json):
    """The server's own count of prompt tokens it did not recompute, and where it came from."""
    usage = raw_json.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        return details["cached_tokens"], "usage.prompt_tokens_details.cached_tokens"
    timings = raw_json.get("timings") or {}
    if timings.get("cache_n") is not None:
        return timings["cache_n"], "timings.cache_n"
    return None, "not reported"


def turn(client, model, messages, max_tokens):
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0
    )
    took = time.perf_counter() - started
    body = json.loads(raw.text)
    cached, source = cached_of(body)
    prompt = body["usage"]["prompt_tokens"]
    return body["choices"][0]["message"]["content"] or "", {
        "prompt_tokens": prompt,
        "cached": cached,
        "computed": None if cached is None else prompt - cached,
        "completion_tokens": body["usage"]["completion_tokens"],
        "latency_ms": took * 1e3,
        "cached_source": source,
        "matched_tokens": (body.get("state_pack") or {}).get("matched_tokens"),
    }


def conversations(client, model, run, how, max_tokens, k):
    """`k` conversations, their turns interleaved round-robin; figures per turn index,
    summed over the conversations."""
    histories = [[{"role": "system", "content": SYSTEM.format(run=f"{run}/{c}")}] for c in range(k)]
    turns = []
    changed = 0
    for q in QUESTIONS:
        summed = None
        for messages in histories:
            messages.append({"role": "user", "content": q})
            answer, t = turn(client, model, messages, max_tokens)
            sent = rerender(answer, how)
            changed += sent != answer
            messages.append({"role": "assistant", "content": sent})
            if summed is None:
                summed = t
            else:
                for key in ("prompt_tokens", "completion_tokens", "latency_ms"):
                    summed[key] += t[key]
                for key in ("cached", "computed", "matched_tokens"):
                    summed[key] = None if summed[key] is None or t[key] is None else summed[key] + t[key]
        turns.append(summed)
    return turns, changed


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, help="NAME=BASE_URL (…/v1)")
    ap.add_argument("--model", required=True, help="the model id to send (each server's own, as NAME:MODEL if they differ)")
    ap.add_argument("--token", default="none")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rerender", choices=["none", "strip", "collapse", "newline"], default="none")
    ap.add_argument("--conversations", type=int, default=1,
                    help="conversations at once, their turns interleaved (figures are their sums)")
    ap.add_argument("--tag", default=time.strftime("%H%M%S"),
                    help="written into every system prompt, so that no invocation is answered from an earlier one's store")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()

    models = dict(m.split(":", 1) for m in args.model.split(",") if ":" in m)
    servers = [s.split("=", 1) for s in args.server]
    results = {name: [] for name, _ in servers}
    changed = {name: 0 for name, _ in servers}
    for run in range(args.runs):
        for name, url in servers:
            client = OpenAI(base_url=url, api_key=args.token, max_retries=0, timeout=600)
            turns, n = conversations(client, models.get(name, args.model), f"{args.tag}-{run}-{args.rerender}-{args.conversations}",
                                     args.rerender, args.max_tokens, args.conversations)
            results[name].append(turns)
            changed[name] += n
            print(f"run {run + 1}/{args.runs} {name}: {sum(t['latency_ms'] for t in turns) / 1e3:.1f} s", file=sys.stderr)

    print(f"\n{len(QUESTIONS)}-turn chat x {args.conversations} interleaved, re-sent history, "
          f"rerender={args.rerender}, medians of {args.runs} runs (each turn: the sum over conversations)")
    for name, _ in servers:
        runs = results[name]
        source = runs[0][0]["cached_source"]
        total_turns = args.runs * len(QUESTIONS) * args.conversations
        print(f"\n{name} (cached = {source}; assistant turns changed by the client: {changed[name]} of {total_turns})")
        print("turn | prompt sent | cached | computed | latency ms")
        for i in range(len(QUESTIONS)):
            col = lambda k: median(r[i][k] for r in runs)  # noqa: E731
            c, computed = col("cached"), col("computed")
            cached_txt = "-" if c is None else f"{c:6.0f}"
            computed_txt = "-" if computed is None else f"{computed:8.0f}"
            print(f"{i + 1:4} | {col('prompt_tokens'):11.0f} | {cached_txt:>6} | {computed_txt:>8} | {col('latency_ms'):10.1f}")
        total_prompt = median(sum(t["prompt_tokens"] for t in r) for r in runs)
        total_cached = median(sum(t["cached"] or 0 for t in r) for r in runs)
        total_ms = median(sum(t["latency_ms"] for t in r) for r in runs)
        print(f"all  | {total_prompt:11.0f} | {total_cached:6.0f} | {total_prompt - total_cached:8.0f} | {total_ms:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rerender": args.rerender, "runs": args.runs, "max_tokens": args.max_tokens,
                       "conversations": args.conversations,
                       "questions": QUESTIONS, "servers": dict(servers), "results": results,
                       "assistant_turns_changed": changed}, f, indent=1)


if __name__ == "__main__":
    main()
