"""pytest fixtures: `provider_simulator`, a running ProviderSimulator for one test, and `raw_server`, a
running RawServer that answers with exactly scripted bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from .rawserver import RawServer
    from .simulator import ProviderSimulator


@pytest.fixture
def provider_simulator() -> Iterator[ProviderSimulator]:
    """A started ProviderSimulator, stopped after the test."""
    # imported here so that loading the plugin (every pytest run) does not import aiohttp
    from .simulator import ProviderSimulator

    sim = ProviderSimulator()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    """A started RawServer, stopped after the test."""
    from .rawserver import RawServer

    server = RawServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
