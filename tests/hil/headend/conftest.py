"""Fixtures of the head-end simulator's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.headend.db import HeadEndDb


@pytest.fixture
def db(tmp_path: Path) -> Iterator[HeadEndDb]:
    with HeadEndDb(tmp_path / "headend.sqlite") as store:
        yield store
