"""Helpers shared by the ``test_config_*.py`` files: the ``write`` fixture and ``config_errors``."""

from __future__ import annotations

import pytest

from omnichannel import ConfigError
from omnichannel.config import load_config


# Not named ``write``: importing it would then clash with the tests' ``write`` argument (ruff F811).
@pytest.fixture(name="write")
def write_fixture(tmp_path):
    def write(text, name="omnichannel-test.toml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def config_errors(*args, **kwargs):
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value
