"""Tests of the Python API, the command line, the docs, privacy, the package's architecture.

Every test collected here is marked `interface`: `pytest -m interface` runs this layer, `pytest -m "interface and not
slow"` its fast tier (the edit loop); tests that start processes, kill runs or train on real data are marked slow.
"""

import pytest

_HERE = __import__("pathlib").Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.interface)
