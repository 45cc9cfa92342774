"""Where am I: is there a cluster, which namespace, which image, which address.

The defaults must fit JupyterHub without flags: a kernel in a singleuser pod finds its
namespace in the service-account mount, its image in ``JUPYTER_IMAGE_SPEC`` and its
reachable address in its pod IP. Outside a cluster (a laptop with a kubeconfig) the same
questions are answered from the kubeconfig. Nothing here raises: callers decide what a
missing answer means.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

if TYPE_CHECKING:  # the kubernetes client is slow to import; --backend auto must not pay it
    from .client import Api

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Overrides controller address detection (e.g. set once for every user of a hub).
CONTROLLER_ADDRESS_ENV = "KUBEMAGIC_CONTROLLER_ADDRESS"

#: Downward-API variable names seen in the wild (z2jh sets none of them; kubemagic's own
#: docs suggest KUBEMAGIC_POD_*).
_POD_NAME_VARS = ("KUBEMAGIC_POD_NAME", "POD_NAME", "MY_POD_NAME")
_POD_IP_VARS = ("KUBEMAGIC_POD_IP", "POD_IP", "MY_POD_IP")
_POD_UID_VARS = ("KUBEMAGIC_POD_UID", "POD_UID", "MY_POD_UID")
_POD_NAMESPACE_VARS = ("KUBEMAGIC_POD_NAMESPACE", "POD_NAMESPACE", "MY_POD_NAMESPACE")


def in_cluster() -> bool:
    """True inside a pod that has a service-account token (in-cluster config works)."""
    return (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (SERVICE_ACCOUNT_DIR / "token").is_file()
    )


def kubernetes_config_available() -> bool:
    """Can the Kubernetes backend plausibly work here? Used by ``--backend auto``.

    In-cluster token → yes. Otherwise the kubeconfig's current context must name a
    server that accepts a TCP connection within half a second: a stale kubeconfig
    pointing at a deleted cluster should mean local engines, not a start-up error.
    Never raises.
    """
    try:
        if in_cluster():
            return True
        server = kubeconfig_server()
        if not server:
            return False
        url = urlparse(server)
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname or "", port), timeout=0.5):
            return True
    except Exception:
        return False


def _kubeconfig_paths(kubeconfig: str | None = None) -> list[Path]:
    if kubeconfig:
        return [Path(kubeconfig).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def _current_context(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(context dict, cluster dict) of the kubeconfig's current or given context."""
    merged: dict[str, list[dict[str, Any]]] = {"contexts": [], "clusters": []}
    current = context
    for path in _kubeconfig_paths(kubeconfig):
        if not path.is_file():
            continue
        doc = yaml.safe_load(path.read_text()) or {}
        current = current or doc.get("current-context")
        for key in merged:
            merged[key].extend(doc.get(key) or [])
    ctx = next((c.get("context") or {} for c in merged["contexts"] if c.get("name") == current), {})
    cluster = next(
        (c.get("cluster") or {} for c in merged["clusters"] if c.get("name") == ctx.get("cluster")),
        {},
    )
    return ctx, cluster


def kubeconfig_server(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """API server URL of the kubeconfig context, or None."""
    try:
        return _current_context(kubeconfig, context)[1].get("server")
    except Exception:
        return None


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """Service-account namespace in a pod, else the kubeconfig context's, else ``default``.

    An explicit kubeconfig or context wins over the pod's own account, as in
    :func:`.client.connect`.
    """
    try:
        if in_cluster() and not kubeconfig and not context:
            return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
        return _current_context(kubeconfig, context)[0].get("namespace") or "default"
    except Exception:
        return "default"


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def pod_name() -> str | None:
    """This kernel's pod name: a downward-API variable, else the hostname (pods' default)."""
    if not in_cluster():
        return None
    return _first_env(_POD_NAME_VARS) or socket.gethostname()


def pod_namespace() -> str | None:
    """This kernel's pod namespace."""
    if not in_cluster():
        return None
    found = _first_env(_POD_NAMESPACE_VARS)
    if found:
        return found
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None


def pod_uid() -> str | None:
    """This kernel's pod UID from the downward API, when exposed (else read the pod)."""
    return _first_env(_POD_UID_VARS) if in_cluster() else None


def pod_ip() -> str | None:
    """This kernel's pod IP: a downward-API variable, else what the hostname resolves to
    (the kubelet writes the pod IP for the hostname into /etc/hosts)."""
    if not in_cluster():
        return None
    found = _first_env(_POD_IP_VARS)
    if found:
        return found
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


def image_from_env() -> str | None:
    """The notebook's image as JupyterHub advertises it (``JUPYTER_IMAGE_SPEC`` or ``_IMAGE``)."""
    return _first_env(("JUPYTER_IMAGE_SPEC", "JUPYTER_IMAGE"))


def own_pod(api: Api) -> dict[str, Any] | None:
    """This kernel's pod as an API dict, or None (not in a pod, or not allowed to read it)."""
    name, namespace = pod_name(), pod_namespace()
    if not name or not namespace:
        return None
    try:
        return api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}", timeout=5)
    except Exception:
        return None


def image_of_pod(pod: dict[str, Any]) -> str | None:
    """The image of a pod's main container: the only one, or JupyterHub's ``notebook``."""
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return None
    preferred = next((c for c in containers if c.get("name") == "notebook"), containers[0])
    return preferred.get("image")


def own_image(api: Api) -> str | None:
    """The notebook's image: ``JUPYTER_IMAGE_SPEC``/``JUPYTER_IMAGE`` (JupyterHub sets them),
    else the image of the kernel's own pod, else None. Engines run what the kernel runs."""
    image = image_from_env()
    if not image and in_cluster():
        image = image_of_pod(own_pod(api) or {})
    return image


def owner_user() -> str:
    """Who owns the engines, for the ``kubemagic.io/owner`` label."""
    user = os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER")
    if not user:
        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
    return user


def route_source_address(host: str) -> str | None:
    """The local address the kernel would use to reach ``host`` (no packet is sent)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def controller_address(
    explicit: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> str | None:
    """Where engines connect to the kernel: ``explicit`` (``--controller-address``), else
    ``$KUBEMAGIC_CONTROLLER_ADDRESS``, else :func:`detect_controller_address`; None when
    none of them answers. Judging the answer (loopback, missing) is the caller's: the
    backend refuses it, ``kubemagic doctor`` tests it with a real pod.
    """
    return (
        explicit
        or os.environ.get(CONTROLLER_ADDRESS_ENV)
        or detect_controller_address(kubeconfig, context)
    )


def detect_controller_address(
    kubeconfig: str | None = None, context: str | None = None
) -> str | None:
    """An address engine pods can probably reach the kernel at, or None.

    1. In a pod: the pod IP — always reachable from other pods.
    2. Otherwise the local address on the route to the API server, when that is not
       loopback (kernel and nodes share a network).
    3. A local single-node cluster (API server on loopback): the address of the default
       route — the node's own address, which its pods reach through the CNI bridge.
    """
    if in_cluster():
        return pod_ip()
    server = kubeconfig_server(kubeconfig, context)
    if server:
        host = urlparse(server).hostname or ""
        try:
            target = host if _is_ip(host) else socket.gethostbyname(host)
        except OSError:
            target = None
        if target and not ipaddress.ip_address(target).is_loopback:
            return route_source_address(target)
    # any non-local address selects the default route; no packet is sent
    return route_source_address("192.0.2.1")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for "", ``localhost`` and every name or address that is loopback here — places
    engine pods cannot reach the kernel at.

    A name that does not resolve on this machine is *not* loopback: the kernel may be
    given a name only the cluster's DNS knows (a Service, a pod's DNS name), and refusing
    it would block a working setup, while a wrong name still fails visibly (engines do not
    register; ``kubemagic doctor``'s test pod names the port it could not reach). Names
    under ``localhost`` are the exception: loopback by definition (RFC 6761), whatever
    this machine's resolver says. A name is loopback only if all its addresses are.
    """
    name = host.strip().rstrip(".").lower()
    if not name or name == "localhost" or name.endswith(".localhost"):
        return True
    if _is_ip(name):
        return ipaddress.ip_address(name).is_loopback
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )
