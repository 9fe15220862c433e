import os

import pytest

pytest_plugins = ["omnichannel.testing"]


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """An empty working directory and no OMNICHANNEL_ variable from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("OMNICHANNEL_"):
            monkeypatch.delenv(name)
