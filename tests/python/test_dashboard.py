"""The live dashboard in headless Chromium during a load run: the numbers in its DOM are
the JSON endpoint's, and a screenshot is saved under the test's output."""

import os
import re
import subprocess
import tempfile
import threading
import time

from conftest import system_tool

FIGURES = ["requests", "prompt_tokens", "prefilled", "cached", "restored", "generated"]


def chromium(args, server):
    browser = system_tool("chromium", "chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        url = f"{server.url}/dashboard#token={server.token}&interval=0.3"
        out = subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--window-size=1100,1500", "--virtual-time-budget=3000", *args, url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout


def dom_figures(dom):
    found = {}
    for name in FIGURES + ["receipts", "states"]:
        m = re.search(rf'id="{name}">([0-9,]+)<', dom)
        assert m, f"{name} not rendered in:\n{dom[:3000]}"
        found[name] = int(m.group(1).replace(",", ""))
    found["clients"] = re.findall(r'<tr data-client="([^"]+)">', dom)
    return found


def agent(server, name, stop, errors):
    """Conversations of up to five turns, one after another, until `stop` is set."""
    try:
        client = server.openai()
        while not stop.is_set():
            messages = [{"role": "system", "content": f"You are {name}, a terse legal assistant."}]
            for i in range(5):
                if stop.is_set():
                    break
                messages.append({"role": "user", "content": f"Question {i}: what is clause {i + 1}?"})
                r = client.chat.completions.create(model=server.model, messages=messages, max_tokens=16)
                messages.append({"role": "assistant", "content": r.choices[0].message.content})
    except Exception as e:  # reported by the test
        errors.append(e)


def test_the_dashboard_shows_the_json_figures_during_and_after_a_load_run(server):
    system_tool("chromium", "chromium-browser")
    out = server.out
    os.makedirs(out, exist_ok=True)
    errors = []
    stop = threading.Event()
    load = [threading.Thread(target=agent, args=(server, f"agent-{k}", stop, errors)) for k in range(3)]
    for t in load:
        t.start()
    # During the run: wait until some requests are answered, then render.
    deadline = time.time() + 300
    while server.get("/dashboard.json")["totals"]["requests"] < 3 and time.time() < deadline:
        time.sleep(0.2)
    before = server.get("/dashboard.json")
    shot = os.path.join(out, "dashboard.png")
    chromium([f"--screenshot={shot}"], server)
    during = dom_figures(chromium(["--dump-dom"], server))
    after = server.get("/dashboard.json")
    assert os.path.getsize(shot) > 10_000, "a real screenshot"
    for name in FIGURES:
        assert before["totals"][name] <= during[name] <= after["totals"][name], (name, before, during)
    assert after["totals"]["requests"] > before["totals"]["requests"], "the load ran while the page did"
    stop.set()
    for t in load:
        t.join()
    assert not errors, errors
    # At rest, the page shows exactly the endpoint's figures.
    final = dom_figures(chromium(["--dump-dom"], server))
    figures = server.get("/dashboard.json")
    for name in FIGURES:
        assert final[name] == figures["totals"][name], (name, final, figures["totals"])
    assert final["receipts"] == figures["ledger"]["receipts"]
    assert final["states"] == figures["ledger"]["states"]
    assert final["clients"] == [c["client"] for c in figures["clients"]]
    assert figures["totals"]["cached"] > 0, "re-sent histories were not recomputed"
