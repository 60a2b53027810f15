"""Tests of discovery, layouts, decoding, DICOM, the image store, the audit (medtl/data).

Every test collected here is marked `data`: `pytest -m data` runs this layer, `pytest -m "data and not
slow"` its fast tier (the edit loop); tests that start processes, kill runs or train on real data are marked slow.
"""

import pytest

_HERE = __import__("pathlib").Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.data)
