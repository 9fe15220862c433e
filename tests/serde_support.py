"""The fixture shared by the ``test_serde_*.py`` files: a fresh ``make_converter()``."""

from __future__ import annotations

import pytest

from omnichannel import make_converter


# Not named ``converter``: importing it would then clash with the tests' ``converter`` argument (ruff F811).
@pytest.fixture(name="converter")
def converter_fixture():
    return make_converter()
