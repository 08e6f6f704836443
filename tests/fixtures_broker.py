"""A private Mosquitto per test session, started with the project's own config."""

from __future__ import annotations

import uuid

import pytest

from fleetgate.embedded import Mosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> Mosquitto:
    broker = Mosquitto(datadir=tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def restartable_mosquitto(tmp_path) -> Mosquitto:
    """A broker of the test's own, for tests that stop or restart it."""
    broker = Mosquitto(datadir=tmp_path / "mosquitto").start()
    yield broker
    broker.stop(kill=True)


@pytest.fixture
def topic_root() -> str:
    """A topic root of the test's own, so tests on the shared broker never see each other."""
    return f"fgtest-{uuid.uuid4().hex[:10]}/v1"
