"""Tests of config, its YAML and checks, run folders and atomic files (medtl/core).

Every test collected here is marked `core`: `pytest -m core` runs this layer, `pytest -m "core and not
slow"` its fast tier (the edit loop); tests that start processes, kill runs or train on real data are marked slow.
"""

import pytest

_HERE = __import__("pathlib").Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.core)
