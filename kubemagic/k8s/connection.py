"""The controller's engine connection info, as the launcher hands it to engine pods.

Apart from the launcher because it is about the controller, not the Job: where its info
comes from (ipyparallel's environment or its connection file) and whether the address in
it is one a pod could ever reach.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from ipyparallel.cluster.launcher import LauncherError

from ..errors import UsageError
from . import incluster

#: Seconds to wait for the controller to write its engine connection file.
_FILE_WAIT_S = 30


def engine_connection(environment: Mapping[str, str], engine_file: str) -> tuple[str, str]:
    """The controller's engine connection info (JSON text) and its registration URL,
    checked to be reachable from pods.

    ``ipp.Cluster`` passes the info as ``$IPP_CONNECTION_INFO`` in the launcher's
    environment; otherwise it is read from the controller's engine connection file.
    """
    text = environment.get("IPP_CONNECTION_INFO")
    if not text:
        deadline = time.monotonic() + _FILE_WAIT_S
        while not os.path.exists(engine_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            with open(engine_file) as f:
                text = f.read()
        except OSError as e:
            raise LauncherError(f"no controller connection file {engine_file}: {e}") from None
    info = json.loads(text)
    interface = info.get("interface", "")
    host = interface.partition("://")[2]
    location = info.get("location") or ""
    target = location if host in ("0.0.0.0", "*") else host
    if incluster.is_loopback(target):
        raise UsageError(
            f"the controller is only reachable at {target or interface} (loopback), "
            "which engine pods cannot reach",
            fix="start the controller on all interfaces with an address pods can reach: "
            "ipp.Cluster(controller_ip='0.0.0.0', controller_location='<kernel address>') "
            "— kubemagic does this for you (--controller-address to override)",
        )
    return text, f"tcp://{target}:{info.get('registration')}"
