"""`omnichannel serve` as an operator runs it: a real process, a real port, SIGTERM to stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_answers_health_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    config = tmp_path / "omnichannel.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    # As under a supervisor: no OMNICHANNEL_ settings, and stdout is a buffered pipe.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OMNICHANNEL_") and k != "PYTHONUNBUFFERED"
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omnichannel",
        "--config",
        str(config),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,  # the message store's default SQLite file goes there
    )
    try:
        banner = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert f"http://127.0.0.1:{port}" in banner.decode()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as response:
                assert response.status == 200
                health = await response.json()
                assert (health["status"], health["degraded"]) == ("ok", [])
                assert "breakers" in health["plugins"]["resilience"]
            async with http.get(f"http://127.0.0.1:{port}/ready") as response:
                assert response.status == 200
                ready = await response.json()
                assert ready["status"] == "ready"
                assert "console" in ready["channels"]
            verify = {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"}
            async with http.get(f"http://127.0.0.1:{port}/webhooks/whatsapp", params=verify) as response:
                assert response.status == 403  # the WhatsApp plugin's webhook route is mounted
            async with http.get(f"http://127.0.0.1:{port}/stats") as response:
                assert response.status == 200  # the message store's REST route
                assert (await response.json())["messages"]["total"] == 0
            async with http.get(f"http://127.0.0.1:{port}/nope") as response:
                assert response.status == 404
                assert (await response.json())["error"]["type"] == "Not Found"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        stderr = (await process.stderr.read()).decode()
        assert "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
