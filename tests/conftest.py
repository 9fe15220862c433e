import asyncio
import os
from collections.abc import Generator

import pytest

pytest_plugins = ["omnichannel.testing"]


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """An empty working directory and no OMNICHANNEL_ variable from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("OMNICHANNEL_"):
            monkeypatch.delenv(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Keep looptime (virtual loop time for ``@pytest.mark.looptime`` tests) from leaking loops.

    looptime 0.9 asks the event loop policy for a loop before every test; since pytest-asyncio
    1.4 a sync test has none, so the policy would create one that nobody closes, and its
    ``ResourceWarning`` would fail whichever test runs when it is collected.
    """
    if pyfuncitem.get_closest_marker("asyncio") is None:
        asyncio.set_event_loop(None)
    return (yield)
