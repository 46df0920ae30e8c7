"""Shared fixtures: a real embedded store process, real drivers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pytest

from tests.mongo_process import StoreProcess


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """One embedded store for the whole session; tests keep apart by database."""
    process = StoreProcess(str(tmp_path_factory.mktemp("store")), "--ttl-interval", "0.2",
                           "--enable-test-commands").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(store: StoreProcess) -> Iterator[pymongo.MongoClient]:
    """A pymongo client of the session's store."""
    mongo: pymongo.MongoClient = pymongo.MongoClient(store.uri, serverSelectionTimeoutMS=5000)
    yield mongo
    mongo.close()


@pytest.fixture
def db(client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    """A database of its own for one test, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield client[name]
    client.drop_database(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the CRUD conformance tally when those tests ran."""
    from tests.unified_runner import RESULTS

    if RESULTS:
        applicable = RESULTS["passed"] + RESULTS["failed"]
        rate = 100.0 * RESULTS["passed"] / applicable if applicable else 0.0
        terminalreporter.write_line(
            f"MongoDB CRUD spec tests: {RESULTS['passed']} passed, {RESULTS['failed']} failed "
            "(each an expected failure, listed with its reason) "
            f"({rate:.1f}% of {applicable} applicable), {RESULTS['not applicable']} not applicable"
        )
