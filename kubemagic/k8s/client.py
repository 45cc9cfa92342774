"""The Kubernetes API handle, and the translation of API failures into errors users can act on.

Requests are plain REST with plain dicts (:meth:`Api.request`): the generated typed client
builds ~300 pydantic models when ``CoreV1Api`` is first imported, close to a second of
CPU before the first engine could even be requested. Every call the backend makes goes
through :func:`api_call`, which knows the verb, resource and namespace it is about — so a
403 becomes "may not create jobs in namespace x; apply ``kubemagic rbac``" instead of a
wall of JSON — and carries a timeout, so no call can hang a cell.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kubernetes.config as k8s_config
import urllib3
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from ..errors import PermissionDenied, StartupError, UsageError
from . import incluster

#: Seconds any single API request may take before it is abandoned.
REQUEST_TIMEOUT = 15
#: Seconds a change the user asked for (scale, stop) is retried while the API server is
#: unreachable or restarting, before it fails with a clear error. Managed clusters upgrade
#: their API servers under running sessions; a restart takes seconds to tens of seconds.
OUTAGE_SECONDS = 60
#: The content type of the JSON merge patches the backend sends (RFC 7386).
MERGE_PATCH = "application/merge-patch+json"
#: Statuses of an API server that is starting, overloaded or behind a restarting proxy.
_TRANSIENT_STATUS = {0, 429, 500, 502, 503, 504}


@dataclass
class Api:
    """One API connection (its own configuration, never the client's global default)."""

    api_client: ApiClient
    #: how the backend authenticated, for messages: "in-cluster" or "kubeconfig (context)"
    source: str

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
        raw: bool = False,
    ) -> Any:
        """One API request; the decoded JSON answer (``raw``: the urllib3 response, unread).

        Raises :class:`ApiException` for any non-2xx status, like the typed client.
        """
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        if raw:
            return response.response
        response.read()
        return json.loads(response.data) if response.data else None

    def watch(self, path: str, query: dict[str, Any], seconds: int) -> Iterator[dict[str, Any]]:
        """The events of one watch request (``{"type": ..., "object": {...}}``), for at most
        ``seconds`` (server side, with a client-side read timeout as a backstop).

        A watch ``ERROR`` event (e.g. 410 Gone: the resourceVersion is too old) is raised
        as :class:`ApiException` with its status code.
        """
        response = self.request(
            "GET",
            path,
            query={**query, "watch": "true", "timeoutSeconds": seconds},
            timeout=(REQUEST_TIMEOUT, seconds + REQUEST_TIMEOUT),
            raw=True,
        )
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiException(status=status.get("code"), reason=status.get("message"))
                    yield event
        finally:
            response.release_conn()


def connect(kubeconfig: str | None = None, context: str | None = None) -> Api:
    """Connect with in-cluster config (in a pod, unless a kubeconfig is given) or a kubeconfig.

    Raises :class:`StartupError` when neither works, saying how to provide one.
    """
    configuration = Configuration()
    try:
        if incluster.in_cluster() and not kubeconfig and not context:
            k8s_config.load_incluster_config(client_configuration=configuration)
            source = "in-cluster service account"
        else:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            source = f"kubeconfig {kubeconfig or '(default)'}" + (
                f", context {context}" if context else ""
            )
    except (k8s_config.ConfigException, OSError, TypeError, ValueError) as e:
        raise StartupError(
            f"no usable Kubernetes configuration: {e}",
            fix="run the kernel in a cluster, set KUBECONFIG (or pass kubeconfig=/context=), "
            "or use --backend local",
        ) from None
    # no silent urllib3 retries (each logs a warning, which a notebook prints): the watch,
    # the lease and through_outage() retry with backoff themselves, and quietly
    configuration.retries = 0
    return Api(api_client=ApiClient(configuration), source=source)


def namespaced(namespace: str, resource: str, name: str = "", group: str = "") -> str:
    """The REST path of a namespaced resource (collection, or one object with ``name``);
    ``group`` with its version, e.g. ``batch/v1`` (core resources: none)."""
    prefix = f"/apis/{group}" if group else "/api/v1"
    path = f"{prefix}/namespaces/{namespace}/{resource}"
    return f"{path}/{name}" if name else path


def transient(error: BaseException) -> bool:
    """Whether a failed request may succeed if repeated: no connection, or a server that
    says it cannot answer yet."""
    if isinstance(error, ApiException):
        return (error.status or 0) in _TRANSIENT_STATUS
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError))


def through_outage(call: Callable[[], Any], what: str, seconds: float = OUTAGE_SECONDS) -> Any:
    """``call()``, repeated with backoff while it fails transiently, for up to ``seconds``;
    then one :class:`StartupError` saying ``what`` was not done."""
    deadline = time.monotonic() + seconds
    delay = 0.25
    outage = False
    while True:
        try:
            return call()
        except Exception as e:
            # a restarted API server answers 403 until its authorizer has read the RBAC
            # objects again: after an outage, a denial is retried too
            denied_after_outage = outage and getattr(e, "status", None) == 403
            if not (transient(e) or denied_after_outage):
                raise
            outage = True
            if time.monotonic() + delay > deadline:
                raise StartupError(
                    f"the Kubernetes API did not answer for {seconds:.0f} s, so {what} was "
                    f"not done (last error: {type(e).__name__}: {str(e)[:200]})",
                    fix="check that the cluster's API server is up, then try again",
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


def api_message(error: ApiException) -> str:
    """The API server's own one-line explanation from an error response."""
    try:
        return json.loads(error.body or "")["message"]
    except Exception:
        return str(error.reason or error.status)


@contextmanager
def api_call(verb: str, resource: str, namespace: str | None = None) -> Iterator[None]:
    """Turn failures of one API request into :class:`KubemagicError` subclasses.

    403 → :class:`PermissionDenied` naming verb, resource and namespace, pointing at
    ``kubemagic rbac``; 404 of the namespace → :class:`UsageError`; 422 → :class:`UsageError`
    quoting the server (an override or selector it rejected); unreachable server or 401 →
    :class:`StartupError`. Other API errors propagate unchanged for the caller to judge.
    """
    where = f" in namespace {namespace!r}" if namespace else ""
    try:
        yield
    except ApiException as e:
        message = api_message(e)
        if e.status == 403:
            raise permission_denied([(verb, resource)], namespace, message) from None
        if e.status == 401:
            raise StartupError(
                f"the Kubernetes API rejected our credentials ({message})",
                fix="refresh the kubeconfig credentials or the service-account token",
            ) from None
        if e.status == 404 and namespace and f'namespaces "{namespace}" not found' in message:
            raise namespace_missing(namespace) from None
        if e.status == 422 or (e.status == 400 and verb in ("create", "patch")):
            raise UsageError(
                f"Kubernetes refused to {verb} {resource}{where}: {message}",
                fix="check the options that shape the engine pods "
                "(pod_overrides, node_selector, tolerations, env)",
            ) from None
        raise
    except (urllib3.exceptions.HTTPError, OSError) as e:
        if isinstance(e, urllib3.exceptions.ReadTimeoutError):
            detail = f"no answer within {REQUEST_TIMEOUT} s"
        else:
            detail = str(e)
        raise StartupError(
            f"cannot reach the Kubernetes API to {verb} {resource}{where}: {detail}",
            fix="check the cluster is up and the kubeconfig/context points at it",
        ) from None


def permission_denied(
    missing: list[tuple[str, str]],
    namespace: str | None,
    detail: str = "",
    user: str | None = None,
) -> PermissionDenied:
    """One :class:`PermissionDenied` listing every missing ``(verb, resource)``.

    ``user`` (or the ``User "..."`` the API server quotes in ``detail``) names the service
    account in the suggested ``kubemagic rbac`` command when it is one.
    """
    ns = namespace or "default"
    what = ", ".join(f"{verb} {resource}" for verb, resource in missing)
    user = user or _quoted_user(detail)
    message = f"Kubernetes permission denied: {user or 'we'} may not {what} in namespace {ns!r}"
    if detail:
        message += f" (API server: {detail})"
    account = service_account_of(user)
    rbac = f"kubemagic rbac --namespace {ns}"
    if account:
        rbac += f" --service-account {account[1]}"
        if account[0] != ns:
            rbac += f" --service-account-namespace {account[0]}"
    return PermissionDenied(
        message,
        fix=f"ask an admin to apply the least-privilege Role kubemagic needs: `{rbac} | "
        "kubectl apply -f -`; or choose a namespace you may use with --namespace",
    )


def service_account_of(user: str | None) -> tuple[str, str] | None:
    """``(namespace, name)`` when the API user is a service account, else None: fixes for a
    service account name it in ``kubemagic rbac --service-account``."""
    match = re.fullmatch(r"system:serviceaccount:([^:]+):(.+)", user or "")
    return (match[1], match[2]) if match else None


def _quoted_user(detail: str) -> str | None:
    match = re.search(r'User "([^"]+)"', detail)
    return match[1] if match else None


def namespace_missing(namespace: str) -> UsageError:
    """The error for a namespace that does not exist."""
    return UsageError(
        f"namespace {namespace!r} does not exist",
        fix=f"create it (kubectl create namespace {namespace}) or pick another with --namespace",
    )


def is_not_found(error: BaseException) -> bool:
    """True for a 404 — e.g. deleting something already gone, which is success."""
    return isinstance(error, ApiException) and error.status == 404
