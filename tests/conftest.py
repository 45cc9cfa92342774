"""Shared pytest fixtures. The real-cluster fixtures (k8s_cluster, second_node) live in tests/cluster/fixture.py."""

pytest_plugins = ["tests.cluster.fixture"]
