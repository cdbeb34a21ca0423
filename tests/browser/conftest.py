import pytest

from pages import chromium, serve


@pytest.fixture(scope="session")
def site():
    with serve() as base:
        yield base


@pytest.fixture(scope="session")
def browser():
    with chromium() as launched:
        yield launched
