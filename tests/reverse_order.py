"""A pytest plugin that runs the collected tests in reverse order, to show that no test needs an earlier one.

`.venv/bin/python -m pytest -p tests.reverse_order tests/test_pipeline.py` runs the file's tests last to first (after
the suite's own ordering in conftest.py, so whole files come in reverse too).
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    items.reverse()


def pytest_report_header():
    return "tests run in reverse order (tests/reverse_order.py)"
