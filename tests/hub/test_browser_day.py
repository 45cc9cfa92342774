"""A researcher's day, in a real browser, through the real JupyterHub.

Headless Debian Chromium, driven by Playwright, does what a person does:

1. logs in on the hub's login page as a fresh user (DummyAuthenticator, HUB_PASSWORD), clicks
   "Start My Server" on the hub's home page, waits through the spawn-pending page and lands in
   JupyterLab at /user/NAME/lab (KubeSpawner: pod jupyter-NAME in namespace jhub-NAME);
2. opens a notebook (uploaded through the server's contents API with a token of the user's) and
   runs ``%load_ext kubemagic`` and a ``%%kubemap`` cell with no Kubernetes options — image,
   namespace and controller address come from the pod. While the map runs it types 3 into the
   widget's engines box and clicks Scale; the widget's engines table names the engine pods
   (``kubemagic-...``, the same kubectl lists in jhub-NAME as admin) and reaches 3 ready; after
   the cell, ``print(r == [...])`` prints True;
3. saves docs/hub-screenshot.png (the widget in JupyterLab served by the hub, 3 engines ready,
   the progress bar full);
4. clicks "Stop My Server" on the hub's home page; within 30 s the user's namespace holds no
   kubemagic Job, pod or Secret (polled with kubectl as admin).

The user and its namespace are deleted afterwards. The phases' timings are printed (``-s``).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.browser.test_lab import browser_deps, chromium, start_cell  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "hub-screenshot.png"
STATE = Path("/var/lib/kubemagic-cluster")
KUBEMAGIC_SELECTOR = "app.kubernetes.io/name=kubemagic"
ENGINE_SELECTOR = "app.kubernetes.io/name=kubemagic,app.kubernetes.io/component=engine"
ITEMS = 60
CELLS = [
    "%load_ext kubemagic",
    f"%%kubemap slow range({ITEMS}) -n 2 --out r\n"
    "import time\n"
    "def slow(x):\n"
    "    time.sleep(0.25)\n"
    "    return x * x",
    f"print(r == [x * x for x in range({ITEMS})])",
]
CLEANUP_LIMIT_S = 30


# -- helpers -------------------------------------------------------------------------------
def _hub_log_tail(lines: int = 80) -> str:
    f = STATE / "hub" / "jupyterhub.log"
    try:
        return f"===== {f} (last {lines} lines) =====\n" + "\n".join(
            f.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no hub log: {e})"


def _kubectl(k8s_cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return k8s_cluster.run_kubectl(*args, check=False, timeout=timeout)


def _kubemagic_objects(k8s_cluster, ns: str) -> list[str]:
    """kubemagic's Jobs, pods and Secrets in ns (as admin), e.g. ["job.batch/kubemagic-..."]."""
    res = _kubectl(k8s_cluster, "get", "jobs,pods,secrets", "-n", ns, "-l", KUBEMAGIC_SELECTOR,
                   "-o", "name")
    if res.returncode:
        raise AssertionError(f"kubectl get in {ns} failed: {res.stderr}")
    return res.stdout.split()


def _engine_pods(k8s_cluster, ns: str) -> set[str]:
    res = _kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", ENGINE_SELECTOR,
                   "-o", "jsonpath={.items[*].metadata.name}")
    if res.returncode:
        raise AssertionError(f"kubectl get pods in {ns} failed: {res.stderr}")
    return set(res.stdout.split())


def _singleuser_log(k8s_cluster, ns: str, tail: int = 150) -> str:
    res = _kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "component=singleuser-server",
                   "-o", "jsonpath={.items[*].metadata.name}")
    pods = res.stdout.split()
    if not pods:
        return f"(no singleuser pod in {ns}: {res.stderr.strip()})"
    out = []
    for pod in pods:
        log = _kubectl(k8s_cluster, "logs", "-n", ns, pod, f"--tail={tail}")
        out.append(f"===== kubectl logs -n {ns} {pod} (last {tail} lines) =====\n"
                   + (log.stdout or log.stderr))
    return "\n".join(out)


def _user_api(hub, name: str, token: str, method: str, path: str, **kw):
    """The user's own Jupyter server's REST API, through the proxy, with the user's token."""
    import requests

    r = requests.request(method, f"{hub.url}/user/{name}/{path}",
                         headers={"Authorization": f"token {token}"}, timeout=60, **kw)
    if r.status_code >= 400:
        raise AssertionError(f"{method} /user/{name}/{path}: {r.status_code} {r.text[:2000]}")
    return r.json() if r.content else None


def _delete_user(hub, name: str) -> None:
    model = hub.api("GET", f"users/{name}", ok=(200, 404)) or {}
    if model.get("servers"):
        hub.stop_server(name)
    hub.api("DELETE", f"users/{name}", ok=(204, 404))


def _retrying(fn, seconds: float = 90):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the hub unreachable or mid-restart: try again
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _notebook() -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    return json.loads(nbformat.writes(nb))


def _finished(cell, timeout: float = 300_000) -> None:
    from playwright.sync_api import expect

    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"^\[\d+\]:"), timeout=timeout)


def _widget_pod_names(widget) -> list[str]:
    """The "pod / process" column of the widget's engines table."""
    rows = widget.locator("table.kubemagic-engines tr")
    return [rows.nth(i).locator("td").nth(2).inner_text().strip() for i in range(1, rows.count())]


# -- the day -------------------------------------------------------------------------------
def test_a_researchers_day_in_the_browser(hub, k8s_cluster, browser_deps, tmp_path):
    from playwright.sync_api import expect

    name = f"day-{uuid.uuid4().hex[:8]}"
    ns = hub.namespace_template.format(username=name)
    timings: dict[str, float] = {}
    pod_log = ""  # the singleuser pod's log, kept before the stop (the pod goes with it)
    expect.set_options(timeout=120_000)
    try:
        with chromium(tmp_path) as ctx:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            try:
                # 1. log in, start the server from the home page, land in JupyterLab
                t_login = time.monotonic()
                page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Fhome")
                page.locator("#username_input").fill(name)
                page.locator("#password_input").fill(hub.password)
                page.locator("#login_submit").click()
                page.wait_for_url(re.compile(r"/hub/home"))
                start = page.locator("#start")
                expect(start).to_have_text(re.compile(r"^\s*Start\s+My Server\s*$"))
                expect(page.locator("#stop")).to_have_count(0)
                start.click()
                # /hub/spawn/NAME -> /hub/spawn-pending/NAME (progress bar) -> /user/NAME/lab
                page.wait_for_url(re.compile(rf"/user/{re.escape(name)}/lab"), timeout=240_000)
                expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=180_000)
                timings["login -> server ready, JupyterLab open"] = time.monotonic() - t_login
                server = hub.user_model(name)["servers"][""]
                assert server["ready"], server
                singleuser = _kubectl(k8s_cluster, "get", "pod", "-n", ns, "-l",
                                      "component=singleuser-server", "-o", "name").stdout.split()
                assert len(singleuser) == 1, f"singleuser pods in {ns}: {singleuser}"

                # 2. a notebook, uploaded with a token of the user's, opened in JupyterLab
                token = hub.api("POST", f"users/{name}/tokens",
                                json={"note": "tests/hub browser day", "expires_in": 3600,
                                      "scopes": [f"access:servers!user={name}"]})["token"]
                # no "receive Jupyter news?" toast over the notebook
                _user_api(hub, name, token, "PUT",
                          "lab/api/settings/@jupyterlab/apputils-extension:notification",
                          json={"raw": json.dumps({"fetchNews": "false", "checkForUpdates": False})})
                _user_api(hub, name, token, "PUT", "api/contents/day.ipynb",
                          json={"type": "notebook", "format": "json", "content": _notebook()})
                page.goto(f"{hub.url}/user/{name}/lab/tree/day.ipynb")
                cells = page.locator(".jp-Notebook .jp-CodeCell")
                expect(cells).to_have_count(len(CELLS))
                expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                       .or_(page.get_by_text("Python 3 (ipykernel) | Idle")).first).to_be_attached(
                    timeout=180_000)

                start_cell(page, cells.nth(0))
                _finished(cells.nth(0))
                expect(cells.nth(0).locator(".jp-OutputArea-output")).to_have_count(0)

                # the map, with no Kubernetes options
                t_map = time.monotonic()
                start_cell(page, cells.nth(1))
                widget = cells.nth(1).locator(".kubemagic-widget")
                expect(widget).to_be_visible(timeout=180_000)
                label = widget.locator(".widget-hbox").nth(1).locator(".widget-html")  # beside the bar
                # the map is under way: items counted, an ETA, engines named by their pods
                expect(label).to_contain_text(re.compile(rf"\d+/{ITEMS} items"), timeout=180_000)
                scale = widget.get_by_role("button", name="Scale")
                expect(scale).to_be_enabled()
                expect(widget.locator(".kubemagic-requested")).to_have_text("2")
                progress_at_click = label.inner_text()
                assert "ETA" in progress_at_click, (
                    f"the map was not running any more when Scale was clicked: {progress_at_click!r}")
                box = widget.locator(".widget-text input").first
                box.fill("3")
                box.press("Enter")
                scale.click()
                t_scale = time.monotonic()
                expect(widget.locator(".kubemagic-requested")).to_have_text("3")
                expect(widget.locator(".kubemagic-ready")).to_have_text("3", timeout=180_000)
                timings["Scale click -> 3 engines ready"] = time.monotonic() - t_scale
                _finished(cells.nth(1))
                timings["first %%kubemap cell -> results"] = time.monotonic() - t_map
                expect(cells.nth(1).locator(".jp-OutputArea-output.jp-RenderedText[data-mime-type"
                                            "='application/vnd.jupyter.stderr']")).to_have_count(0)
                expect(widget.get_by_text(f"{ITEMS}/{ITEMS} items")).to_be_visible()
                expect(label).to_contain_text("done in")
                expect(widget.locator(".widget-hprogress .progress-bar")).to_have_attribute(
                    "style", re.compile(r"width:\s*100(\.0+)?%"))
                expect(widget.locator(".kubemagic-ready")).to_have_text("3")
                rows = widget.locator("table.kubemagic-engines tr")
                expect(rows).to_have_count(4)  # header + 3 engines
                # the table's pod names are the engine pods kubectl (as admin) sees in jhub-NAME
                deadline = time.monotonic() + 30
                while True:
                    shown = _widget_pod_names(widget)
                    pods = _engine_pods(k8s_cluster, ns)
                    if len(set(shown)) == 3 and set(shown) <= pods:
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"widget's pods {shown} vs kubectl's engine pods "
                                             f"in {ns}: {sorted(pods)}")
                    page.wait_for_timeout(500)
                assert all(n.startswith("kubemagic-") for n in shown), shown
                print(f"\nengine pods (widget == kubectl -n {ns}): {sorted(shown)}")
                print(f"progress when Scale was clicked: {progress_at_click}")

                # 3. the screenshot: 3 engines ready, the progress bar full
                widget.scroll_into_view_if_needed()
                page.wait_for_timeout(500)  # let the engines table settle for the picture
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))

                start_cell(page, cells.nth(2))
                _finished(cells.nth(2), timeout=120_000)
                expect(cells.nth(2).locator(".jp-OutputArea-output")).to_have_text("True")

                # 4. stop the server from the hub's control panel
                pod_log = _singleuser_log(k8s_cluster, ns)
                page.goto(f"{hub.url}/hub/home")
                stop = page.locator("#stop")
                expect(stop).to_have_text("Stop My Server")
                t_stop = time.monotonic()
                stop.click()
                left = _kubemagic_objects(k8s_cluster, ns)
                while left and time.monotonic() - t_stop < CLEANUP_LIMIT_S:
                    time.sleep(0.25)
                    left = _kubemagic_objects(k8s_cluster, ns)
                cleaned = time.monotonic() - t_stop
                assert not left, (f"kubemagic objects left in {ns} {cleaned:.1f} s after "
                                  f"'Stop My Server': {left}")
                timings["Stop My Server -> 0 kubemagic Jobs/pods/Secrets"] = cleaned
                expect(stop).to_be_hidden(timeout=120_000)
                expect(page.locator("#start")).to_have_text(re.compile(r"Start My Server"))
                deadline = time.monotonic() + 120
                while hub.user_model(name)["servers"]:
                    assert time.monotonic() < deadline, "the hub still lists the server 120 s after stop"
                    time.sleep(0.5)
            except Exception:
                try:
                    page.screenshot(path=str(tmp_path / "failure.png"))
                    print(f"\nfailure screenshot: {tmp_path / 'failure.png'} (page {page.url})")
                    if page.locator(".kubemagic-widget").count():
                        print("widget DOM:\n" + page.locator(".kubemagic-widget").first.inner_html()[:8000])
                except Exception as e:  # noqa: BLE001 - diagnostics must not hide the failure
                    print(f"(no failure screenshot: {e})")
                print(_hub_log_tail())
                print(_singleuser_log(k8s_cluster, ns) if not pod_log else pod_log)
                print(_kubectl(k8s_cluster, "get", "all,secrets,events", "-n", ns).stdout[-6000:])
                raise
    finally:
        try:
            _retrying(lambda: _delete_user(hub, name))  # the hub may be restarting meanwhile
        finally:
            _kubectl(k8s_cluster, "delete", "namespace", ns, "--ignore-not-found", "--wait=false")
        if timings:
            print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    assert SCREENSHOT.stat().st_size > 10_000

