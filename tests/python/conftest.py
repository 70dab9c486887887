"""Shared fixtures: the server under test, started by tests/openai_clients.rs."""

import json
import os
import urllib.request

import pytest


class Server:
    def __init__(self):
        self.url = os.environ["STATE_PACK_URL"]
        self.token = os.environ["STATE_PACK_TOKEN"]
        self.model = os.environ["STATE_PACK_MODEL"]
        self.out = os.environ.get("STATE_PACK_OUT", ".")

    def get(self, path):
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": "Bearer " + self.token}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)

    def receipts(self):
        return self.get("/health")["receipts"]

    def receipt_ops(self, start, end):
        """The `op` of every receipt in start..end."""
        return [json.loads(self.get(f"/receipts/{s}")["body"])["op"] for s in range(start, end)]

    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=self.token, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def server():
    return Server()


def system_tool(*names):
    """The path of the first of `names` on PATH. Missing: a failure where the run requires
    system tools (`.ci/run` installs them and sets STATE_PACK_REQUIRE_SYSTEM_TOOLS=1),
    otherwise a skip that says what to install."""
    import shutil

    for n in names:
        path = shutil.which(n)
        if path:
            return path
    message = f"{names[0]} is not installed (Debian: apt-get install {names[0]}; .ci/run does)"
    if os.environ.get("STATE_PACK_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
