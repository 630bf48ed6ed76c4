import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DEMO, ENVOY, WASM, Processes  # noqa: E402


def pytest_sessionstart(session):
    missing = [str(p) for p in (Path(ENVOY), WASM, DEMO) if not Path(p).exists()]
    if missing:
        raise pytest.UsageError(f"build first (make build / make py-deps): missing {missing}")


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()
