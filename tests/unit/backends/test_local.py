"""kubemagic.backends.local: the local backend's options."""

from __future__ import annotations

import pytest

from kubemagic.backends.local import local_backend
from kubemagic.errors import UsageError


def test_local_backend_refuses_kubernetes_options():
    with pytest.raises(UsageError, match="--image, --memory only apply"):
        local_backend(image="x", memory="1Gi")
    with pytest.raises(UsageError, match="unknown option"):
        local_backend(colour="red")
    spec = local_backend(env={"A": 1})
    assert spec.name == "local" and spec.config["ScalableLocalEngineSetLauncher"]["environment"] == {"A": "1"}
