from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "peers: runs etcd and PySyncObj from bench.compare's cache (python -m bench.compare "
        "--install); skipped when they are not installed there",
    )
