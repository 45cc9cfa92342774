"""Shared pytest fixtures. The real-cluster fixture lives in tests/cluster/fixture.py."""

pytest_plugins = ["tests.cluster.fixture"]
