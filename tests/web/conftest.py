"""Fixtures for the web application's tests: a province node's config, a Desk, a logged-in client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.testing import build_federation
from node.web.desk import Desk

PASSWORD = "correct horse battery"
ORIGIN = "http://testserver"


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    """Province 51's node config (keys, data dir), no servers running."""
    return build_federation(tmp_path / "fed", ["51"]).configs["51"]


@pytest.fixture
def desk(node_config: Path) -> Iterator[Desk]:
    d = Desk(node_config)
    d.accounts.add("alice", "caseworker", "510104", PASSWORD)
    d.accounts.add("audrey", "auditor", "510000", PASSWORD)
    yield d
    d.close()


@pytest.fixture
def client(desk: Desk) -> Iterator[object]:
    from starlette.testclient import TestClient

    from node.web.app import create_app

    with TestClient(create_app(desk), base_url=ORIGIN, raise_server_exceptions=False) as c:
        yield c


def login(client: object, name: str = "alice", password: str = PASSWORD) -> object:
    """Sign in through the login form; the response to the POST."""
    token = csrf_of(client.get("/login").text)  # type: ignore[attr-defined]
    return client.post("/login", data={"csrf": token, "name": name, "password": password},  # type: ignore[attr-defined]
                       headers={"Origin": ORIGIN}, follow_redirects=False)
