"""``kubemagic doctor``'s test pod: the script it runs and the Job that runs it. Pure.

The pod stands in for an engine where that matters to the checks: it runs the engine
image as the engines' non-root user, and carries the engine labels, so the NetworkPolicy
that admits engines to the controller applies to it too. The script needs nothing but
Python — finding out whether kubemagic is installed in the image is one of its jobs.
"""

from __future__ import annotations

from typing import Any

from .manifests import engine_labels

#: Label marking the doctor's test Job and pod (they also carry the engine labels).
DOCTOR_LABEL = "kubemagic.io/doctor"
#: Name of the probe's container (its log is read by this name).
PROBE_CONTAINER = "probe"
#: The line of the probe's stdout that carries its report (JSON after the prefix).
REPORT_PREFIX = "KUBEMAGIC-DOCTOR "

#: ``python -c PROBE ADDRESS PORT,PORT,... TOKEN``. The probe reports twice: over each
#: TCP connection it makes (so no log access is needed) and on stdout. Exit code: 0
#: fine, +2 kubemagic/ipyparallel missing, +4 a port unreachable.
PROBE = r"""
import json, socket, sys, time
address, ports, token = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], sys.argv[3]
out = {"python": sys.version.split()[0]}
code = 0
for mod in ("kubemagic", "ipyparallel"):
    try:
        out[mod] = __import__(mod).__version__
    except Exception as e:
        out[mod] = "MISSING: %s: %s" % (type(e).__name__, e)
        code |= 2
report = json.dumps(out)
out["ports"] = {}
# retried for 10 s: a NetworkPolicy engine admits a new pod's traffic a moment after it
# starts (engines reconnect on their own; one early refusal must not fail the check)
pending, deadline = list(ports), time.monotonic() + 10
while pending:
    for port in list(pending):
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                s.sendall((token + "\n" + report + "\n").encode())
            out["ports"][str(port)] = "connected"
            pending.remove(port)
        except Exception as e:
            out["ports"][str(port)] = "%s: %s" % (type(e).__name__, e)
    if not pending or time.monotonic() > deadline:
        break
    time.sleep(0.5)
if pending:
    code |= 4
print("KUBEMAGIC-DOCTOR " + json.dumps(out), flush=True)
sys.exit(code)
"""


def probe_command(address: str, ports: list[int], token: str) -> list[str]:
    """The container command: the probe connects to ``address`` on ``ports``, sending
    ``token`` first so the doctor's listeners count only their own pod."""
    return ["python", "-c", PROBE, address, ",".join(map(str, ports)), token]


def probe_job(
    *,
    name: str,
    namespace: str,
    owner: str,
    image: str,
    command: list[str],
    deadline_seconds: int,
) -> dict[str, Any]:
    """A one-pod Job running ``command`` once in ``image``, labelled and secured like the
    engine pods of ``owner`` (see :func:`.manifests.engine_job`), with no API token.

    No retries (``backoffLimit: 0``): the first outcome is the answer. It ends after
    ``deadline_seconds`` whatever happens, and the Job is deleted a minute after it
    finished in case the doctor could not delete it.
    """
    labels = {**engine_labels(name, owner), DOCTOR_LABEL: "probe"}
    container = {
        "name": PROBE_CONTAINER,
        "image": image,
        "command": list(command),
        "env": [{"name": "IPYTHONDIR", "value": "/tmp/.ipython"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 60,
            "activeDeadlineSeconds": deadline_seconds,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
