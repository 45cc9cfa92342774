"""Cluster housekeeping for the CLI: ``kubemagic ls`` and ``kubemagic clean``.

Everything here uses only what the least-privilege Role (``kubemagic rbac``) grants —
list/get/delete Jobs, delete Secrets — so a user can tidy up after themselves without
admin rights. Objects are found by the labels :mod:`kubemagic.k8s.manifests` puts on
every Job and Secret the backend creates.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from kubernetes.client.exceptions import ApiException

from ..errors import KubemagicError
from . import incluster
from .client import Api, api_call, api_message, connect, is_not_found, namespaced
from .manifests import LABEL_NAME, LABEL_OWNER, sanitize_label_value
from .podstate import job_end

#: every Job and Secret the backend creates carries this label
SELECTOR = f"{LABEL_NAME}=kubemagic"


@dataclass
class JobRow:
    """One line of ``kubemagic ls``."""

    namespace: str
    name: str
    owner: str
    age_s: float
    ready: int
    requested: int
    state: str


def job_state(job: dict[str, Any]) -> str:
    """Deleting, Complete, Failed (with the reason), Suspended, Idle, Running or Starting."""
    meta, spec, status = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Deleting"
    end = job_end(job)
    if end is not None:
        if not end.failed:
            return "Complete"
        return f"Failed ({end.reason})" if end.reason else "Failed"
    if spec.get("suspend"):
        return "Suspended"
    if spec.get("parallelism") == 0:
        return "Idle"  # scaled to 0 engines; the Job (and its lease) stays
    if (status.get("ready") or 0) > 0:
        return "Running"
    return "Starting"


def _age(timestamp: str | None, now: dt.datetime) -> float:
    """Seconds since an RFC 3339 ``timestamp`` (0 when absent or in the future)."""
    if not timestamp:
        return 0.0
    created = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return max((now - created).total_seconds(), 0.0)


def format_age(seconds: float) -> str:
    """kubectl-style age: 45s, 12m, 3h4m, 2d3h."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def job_row(job: dict[str, Any], now: dt.datetime | None = None) -> JobRow:
    """The ``kubemagic ls`` line of one Job (an API dict)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    meta, spec, status = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    return JobRow(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        owner=(meta.get("labels") or {}).get(LABEL_OWNER, ""),
        age_s=_age(meta.get("creationTimestamp"), now),
        ready=int(status.get("ready") or 0),
        requested=0 if spec.get("suspend") else int(spec.get("parallelism") or 0),
        state=job_state(job),
    )


def _list_jobs(api: Api, namespace: str | None, selector: str) -> list[dict[str, Any]]:
    """Jobs matching ``selector`` in ``namespace`` (None: every namespace)."""
    path = namespaced(namespace, "jobs", group="batch/v1") if namespace else "/apis/batch/v1/jobs"
    with api_call("list", "jobs.batch", namespace):
        return api.request("GET", path, query={"labelSelector": selector})["items"] or []


def list_jobs(
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    all_namespaces: bool = False,
    api: Api | None = None,
) -> list[JobRow]:
    """The kubemagic Jobs in the namespace (or every namespace), oldest first."""
    api = api or connect(kubeconfig, context)
    ns = None if all_namespaces else namespace or incluster.default_namespace(kubeconfig, context)
    rows = [job_row(j) for j in _list_jobs(api, ns, SELECTOR)]
    return sorted(rows, key=lambda r: -r.age_s)


def print_jobs(
    rows: list[JobRow], show_namespace: bool = False, out: TextIO | None = None
) -> None:
    """``kubemagic ls``'s table, kubectl-style."""
    out = out or sys.stdout
    if not rows:
        print("no kubemagic Jobs", file=out)
        return
    columns = ["NAME", "OWNER", "AGE", "ENGINES", "STATE"]
    header = (["NAMESPACE"] if show_namespace else []) + columns
    table = [header] + [
        ([r.namespace] if show_namespace else [])
        + [r.name, r.owner or "-", format_age(r.age_s), f"{r.ready}/{r.requested}", r.state]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def clean(
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    dry_run: bool = False,
    all_owners: bool = False,
    owner: str | None = None,
    wait: bool = True,
    timeout: float = 60.0,
    api: Api | None = None,
    out: TextIO | None = None,
) -> int:
    """Delete kubemagic Jobs (foreground propagation: pods first) and Secrets.

    Secrets: the Role grants no list on Secrets (the backend never reads one), so when
    listing is forbidden the Secret named like each Job (the backend's convention) is
    deleted; each such Secret is also owned by its Job and goes with it anyway.
    Returns 0, or 1 if anything could not be deleted.
    """
    out = out or sys.stdout
    api = api or connect(kubeconfig, context)
    ns = namespace or incluster.default_namespace(kubeconfig, context)
    selector = SELECTOR
    who = None
    if not all_owners:
        who = sanitize_label_value(owner or incluster.owner_user())
        selector += f",{LABEL_OWNER}={who}"
    jobs = [j["metadata"]["name"] for j in _list_jobs(api, ns, selector)]
    secrets, secrets_listed = _list_secrets(api, ns, selector)
    if not secrets_listed:
        secrets = list(jobs)  # one Secret per Job, same name
    prefix = "would delete" if dry_run else "deleting"
    scope = "all owners" if all_owners else f"owner {who}"
    if not jobs and not secrets:
        print(f"nothing to clean in namespace {ns} ({scope})", file=out)
        return 0
    failed = 0
    for name in jobs:
        print(f"{prefix} job/{name} (namespace {ns})", file=out)
        if not dry_run:
            failed += not _delete(api, "jobs", ns, name, out)
    for name in secrets:
        if not secrets_listed and not dry_run:
            # not listed: may already be gone with its Job (owner reference); a 404 is fine
            _delete(api, "secrets", ns, name, out, quiet=True)
            continue
        print(f"{prefix} secret/{name} (namespace {ns})", file=out)
        if not dry_run:
            failed += not _delete(api, "secrets", ns, name, out)
    if not dry_run and wait and jobs:
        _wait_gone(api, ns, set(jobs), timeout, out)
    if dry_run:
        print(f"dry run: nothing was deleted ({len(jobs)} job(s), {len(secrets)} secret(s))",
              file=out)
    elif not failed:
        print(f"deleted {len(jobs)} job(s) and their pods and secrets", file=out)
    return 1 if failed else 0


def _list_secrets(api: Api, ns: str, selector: str) -> tuple[list[str], bool]:
    """(names of the Secrets matching ``selector``, whether listing them was allowed)."""
    try:
        items = api.request("GET", namespaced(ns, "secrets"), query={"labelSelector": selector})
    except ApiException as e:
        if e.status == 403:
            return [], False
        raise
    return [s["metadata"]["name"] for s in items["items"] or []], True


def _delete(api: Api, kind: str, ns: str, name: str, out: TextIO, quiet: bool = False) -> bool:
    """Delete Job or Secret ``name`` (``kind`` "jobs" or "secrets"; foreground: dependents
    first); already gone counts as deleted. Failures are printed (unless ``quiet``)."""
    group = "batch/v1" if kind == "jobs" else ""
    resource = f"{kind}.batch" if group else kind
    try:
        with api_call("delete", resource, ns):
            api.request(
                "DELETE",
                namespaced(ns, kind, name, group=group),
                query={"propagationPolicy": "Foreground"},
            )
    except ApiException as e:
        if is_not_found(e):
            return True
        print(f"  could not delete {resource} {name}: {api_message(e)}", file=out)
        return False
    except KubemagicError as e:
        if not quiet:
            print(f"  could not delete {resource} {name}: {e}", file=out)
        return False
    return True


def _wait_gone(api: Api, ns: str, names: set[str], timeout: float, out: TextIO) -> None:
    """Foreground deletion: a Job disappears only after its pods did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {j["metadata"]["name"] for j in _list_jobs(api, ns, SELECTOR)} & names
        if not left:
            return
        time.sleep(0.5)
    print(f"  still terminating after {timeout:.0f} s: {', '.join(sorted(left))}", file=out)
