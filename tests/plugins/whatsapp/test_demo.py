"""`omnichannel demo`: the README's main command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from omnichannel_whatsapp.demo import CAMPAIGN, run_demo


async def test_the_demo_accounts_for_every_message():
    lines: list[str] = []
    counts = await run_demo(echo=lines.append)
    assert sum(counts.values()) == CAMPAIGN
    # The recipient that is not on WhatsApp fails later, by webhook (131026); the resilience
    # plugin retries the outage's transient failures, which are then accepted.
    assert counts.get("failed") == 1
    assert counts.get("read", 0) + counts.get("delivered", 0) + counts.get("sent", 0) == CAMPAIGN - 1
    text = "\n".join(lines)
    assert "outage: the sandbox now fails the next 3 requests" in text
    retries = [line for line in lines if line.startswith("  retry ")]
    assert len(retries) == 3
    assert all("attempt 1 failed: TransientDeliveryError (code 2)" in line for line in retries)
    assert text.count("(attempt 2)") == 3
    assert "failed: code 131026" in text
    # The store plugin's report (GET /stats) of the demo's temporary message store.
    assert "  messages 12, delivered 11, read" in text
    assert "  error codes: 131026 x1" in text
    # GET /health: the resilience plugin's breaker closed again after the outage.
    assert "  resilience: ok (breakers: whatsapp:106540352242922 closed)" in lines
    assert "  store: ok" in lines
    # The demo's own /metrics, served by the metrics plugin: every message was accepted once.
    assert '  omnichannel_messages_sent_total{channel="whatsapp",sender="106540352242922"} 12.0' in lines


def test_omnichannel_demo_command_exits_0():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNICHANNEL_")}
    done = subprocess.run(
        [sys.executable, "-m", "omnichannel", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "summary" in done.stdout
    assert "Traceback" not in done.stderr
