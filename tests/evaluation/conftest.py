"""Tests of metrics, intervals, records, shift, referral, subgroups (medtl/evaluation).

Every test collected here is marked `evaluation`: `pytest -m evaluation` runs this layer, `pytest -m "evaluation and not
slow"` its fast tier (the edit loop); tests that start processes, kill runs or train on real data are marked slow.
"""

import pytest

_HERE = __import__("pathlib").Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.evaluation)
