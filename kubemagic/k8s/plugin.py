"""The Kubernetes backend as its ``kubemagic.backends`` entry point presents it.

Cheap to import on purpose: ``--backend auto`` and the magic's flags load every backend's
entry, and a kernel that never starts Kubernetes engines should not pay for the
Kubernetes client, which :mod:`.backend` imports.
"""

from __future__ import annotations

from typing import Any

from ..backends import Backend, BackendSpec
from .incluster import kubernetes_config_available
from .options import KubernetesOptions


def _make_spec(**options: Any) -> BackendSpec:
    from .backend import kubernetes_backend

    return kubernetes_backend(**options)


#: the ``kubernetes`` entry point: preferred by ``auto`` wherever a cluster is configured
BACKEND = Backend(
    where="Kubernetes",
    options=KubernetesOptions,
    make_spec=_make_spec,
    available=kubernetes_config_available,
    advice="add --backend kubernetes (and make a kubeconfig or in-cluster config available)",
    auto_rank=10,
)
