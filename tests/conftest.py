"""Shared fixtures: the built-in tasks are loaded once per test session (per worker)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QUANTWISE_PROGRESS", "0")


@pytest.fixture(scope="session")
def mnist():
    from quantwise.tasks import load_task

    return load_task("mnist-cnn", limit=400)


@pytest.fixture(scope="session")
def bbc_small():
    from quantwise.tasks import load_task

    return load_task("bbc-minilm", limit=24)
