"""Fixtures of the several-process tests: a real redis-server of their own, a database of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pytest

from tests.helpers.redis_process import RedisProcess, require_redis
from tests.mongo_process import StoreProcess


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    """A redis-server on a free port (fails in CI, skips elsewhere, when none is installed)."""
    process = RedisProcess(require_redis()).start()
    yield process
    process.stop()


@pytest.fixture
def database(store: StoreProcess, client: pymongo.MongoClient) -> Iterator[str]:
    """A fresh database name on the session's store, dropped afterwards."""
    name = f"rt_{uuid.uuid4().hex[:10]}"
    yield name
    client.drop_database(name)
