# JupyterHub configuration of the test hub (tests/hub/up starts `jupyterhub -f` this file).
# The hub and its proxy run on the host, KubeSpawner starts each user's server in the namespace
# jhub-<user> of the test cluster, set up by pre_spawn_hook (see user_namespace.py).
# Everything machine-specific comes from the environment tests/hub/up sets.
import asyncio
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import user_namespace  # noqa: E402  (tests/hub/user_namespace.py)

c = get_config()  # noqa: F821

HUB_STATE = Path(os.environ["HUB_STATE"])
HOST_IP = os.environ.get("HUB_HOST_IP", "10.88.0.1")
PROXY_PORT = int(os.environ.get("HUB_PROXY_PORT", "8000"))
PROXY_API_PORT = int(os.environ.get("HUB_PROXY_API_PORT", "8001"))
HUB_PORT = int(os.environ.get("HUB_PORT", "8081"))
KUBECTL = os.environ["KUBECTL"]
KUBECONFIG = os.environ["KUBECONFIG"]  # the jupyterhub ServiceAccount's, not admin

# -- hub and proxy: the proxy's public side on loopback, the hub's API on the bridge address
#    (singleuser pods reach it there; the proxy reaches the pods' IPs through the bridge)
c.JupyterHub.bind_url = f"http://127.0.0.1:{PROXY_PORT}"
c.JupyterHub.hub_bind_url = f"http://{HOST_IP}:{HUB_PORT}"
c.JupyterHub.hub_connect_url = f"http://{HOST_IP}:{HUB_PORT}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.command = [os.environ["HUB_CHP"]]
c.ConfigurableHTTPProxy.auth_token = os.environ["HUB_PROXY_TOKEN"]
c.ConfigurableHTTPProxy.pid_file = str(HUB_STATE / "proxy.pid")
c.ConfigurableHTTPProxy.debug = False
c.JupyterHub.pid_file = str(HUB_STATE / "jupyterhub.pid")
c.JupyterHub.db_url = f"sqlite:///{HUB_STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(HUB_STATE / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # the hub stopping (tests/hub/down) stops the servers

# -- who may log in: anyone, with the one test password
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ["HUB_PASSWORD"]
c.Authenticator.allow_all = True

# -- the tests' admin token: a service in the built-in admin role
c.JupyterHub.services = [{"name": "kubemagic-tests", "api_token": os.environ["HUB_API_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["kubemagic-tests"]}]

# -- KubeSpawner: one namespace per user
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.enable_user_namespaces = True
c.KubeSpawner.user_namespace_template = "jhub-{username}"
c.KubeSpawner.user_namespace_labels = dict(user_namespace.NAMESPACE_LABELS)
c.KubeSpawner.image = os.environ.get("HUB_SINGLEUSER_IMAGE", "kubemagic-singleuser:dev")
c.KubeSpawner.image_pull_policy = "IfNotPresent"  # imported with ctr; nothing to pull from
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.default_url = "/lab"
c.KubeSpawner.uid = 1000  # user `engine` of the image, HOME=/home/engine
c.KubeSpawner.gid = 1000
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 90
c.KubeSpawner.cpu_guarantee = 0.1
c.KubeSpawner.cpu_limit = 1
c.KubeSpawner.mem_guarantee = "256M"
c.KubeSpawner.mem_limit = "1G"
c.KubeSpawner.delete_grace_period = 1
c.KubeSpawner.delete_pvc = False  # no user storage here (and no right to PVCs)
# the guide's Helm values, from the same file docs/jupyterhub.md shows: service account,
# extraEnv (downward API: KUBEMAGIC_POD_IP, ...), hub.config.KubeSpawner (token mounted)
for _name, _value in user_namespace.kubespawner_settings(user_namespace.load_values()).items():
    setattr(c.KubeSpawner, _name, _value)


def _setup_namespace(namespace: str, username: str) -> str:
    objs = user_namespace.user_objects(namespace, username, HOST_IP)
    manifest = user_namespace.yaml.safe_dump_all(objs, sort_keys=False)
    res = subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, "--request-timeout=20s", "apply", "--server-side",
         "--force-conflicts", "--field-manager=jupyterhub", "-f", "-"],
        input=manifest, capture_output=True, text=True, timeout=60)
    if res.returncode:
        raise RuntimeError(f"setting up namespace {namespace} failed: {res.stderr.strip()}")
    return res.stdout


async def pre_spawn_hook(spawner):
    """The user's namespace: kubemagic's RBAC, quota, z2jh's singleuser policy + the guide's."""
    namespace = spawner.namespace
    out = await asyncio.to_thread(_setup_namespace, namespace, spawner.user.name)
    spawner.log.info("namespace %s set up for %s:\n%s", namespace, spawner.user.name, out.strip())


c.KubeSpawner.pre_spawn_hook = pre_spawn_hook
