"""The OpenAPI document against the server: schemathesis, every operation, every check.

Schemathesis (https://schemathesis.readthedocs.io) generates requests from
``/api/v1/openapi.json`` - valid ones, which must be accepted, and ones that break the
document, which must be refused - and checks every answer against the document (status
codes, content types, JSON bodies, no 5xx). The run is deterministic (a fixed seed;
``--generation-deterministic``, which keeps no example database) and bounded
(``--max-examples``): on the memory broker without ``--api-key`` and on the Redis broker
with one. Those two runs cover both brokers and both ways of authenticating back ends;
the other two pairings only repeated them (about 50 s each, in a suite near its
15-minute budget). A route another change adds joins this test through the document.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import StartServer
from .redis_fixture import RedisServer

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 15
RUN_TIMEOUT_S = 240


# The run has its own bound (RUN_TIMEOUT_S); with the admin routes (24 operations) it
# took 118 s on a busy 2-core machine, past pytest-timeout's default of 120 s for the test.
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
@pytest.mark.parametrize(
    ("broker", "api_key"),
    [("memory", None), ("redis", "contract-test-key")],
    ids=["memory", "redis-key"],
)
async def test_schemathesis_finds_nothing(
    tidings_server: StartServer,
    redis_server: RedisServer,
    tmp_path: Path,
    broker: str,
    api_key: str | None,
) -> None:
    args = ["--broker", redis_server.url] if broker == "redis" else []
    if api_key:
        args += ["--api-key", api_key]
    server = await tidings_server(*args)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
        "--checks",
        "all",
        "--seed",
        "1",
        "--generation-deterministic",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    if api_key:
        command += ["--header", f"Authorization: Bearer {api_key}"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"schemathesis found failures:\n{text[-12000:]}"
    # It ran every operation of the document, not a handful.
    assert "No failures" in text or "passed" in text, text[-4000:]
    assert server.running, f"the server died under schemathesis:\n{server.log_tail()}"
