"""Site-wide defaults and limits: what a hub admin sets once for every user.

A traitlets config file, as IPython and ipyparallel use, named ``kubemagic_config.py`` (or
``.json``) in any directory of Jupyter's config path (``jupyter --paths``: ``/etc/jupyter``
and ``/usr/local/etc/jupyter`` for an admin — where Zero to JupyterHub's
``singleuser.extraFiles`` can drop it —, ``~/.jupyter`` for the user)::

    c.Kubemagic.max_engines = 8          # per session; a larger -n gets a clear error
    c.Kubemagic.default_engines = 2      # -n when a cell does not give one
    c.Kubemagic.idle_timeout = 1800      # seconds without a map, then engines scale to zero
    c.Kubemagic.cpu = "500m"             # engine pod resources, unless --cpu/--memory say
    c.Kubemagic.memory = "1Gi"

Files later in the path (the system's) load first and earlier ones (the user's) override
them, as for every Jupyter config — except ``max_engines``: the smallest limit of all files
holds, so a user's own file can lower the admin's limit but not raise it. (The hard limit
on a shared cluster is the namespace's ResourceQuota; this one fails early and politely.)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from traitlets import Float, Integer, Unicode
from traitlets.config import Config, Configurable
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from .errors import UsageError

CONFIG_NAME = "kubemagic_config"


class Kubemagic(Configurable):
    """Defaults and limits for every kubemagic session of this installation."""

    default_engines = Integer(
        2, help="number of engines a new session starts when the cell gives no -n"
    ).tag(config=True)
    max_engines = Integer(
        0, help="most engines one session may have (0: no limit); the smallest value of "
        "all config files holds"
    ).tag(config=True)
    idle_timeout = Float(
        None, allow_none=True, help="seconds without a map after which a session's engines "
        "are scaled to zero (0: never); default 1800 on Kubernetes, off locally"
    ).tag(config=True)
    cpu = Unicode(
        None, allow_none=True, help="[kubernetes] default CPU per engine pod, e.g. '500m'"
    ).tag(config=True)
    memory = Unicode(
        None, allow_none=True, help="[kubernetes] default memory per engine pod, e.g. '1Gi'"
    ).tag(config=True)


@dataclass(frozen=True)
class Settings:
    """The loaded configuration, and which file set the engine limit (for messages)."""

    defaults: Kubemagic
    limit_source: str = ""

    def check_engines(self, n: int) -> None:
        """Refuse ``n`` engines above ``max_engines``, naming the limit and who set it."""
        limit = self.defaults.max_engines
        if limit and n > limit:
            raise UsageError(
                f"{n} engines asked for, but at most {limit} per session are allowed here",
                fix=f"ask for {limit} or fewer (e.g. -n {limit}); the limit is "
                f"c.Kubemagic.max_engines in {self.limit_source}, set by your "
                "administrator — ask them if you need more",
            )

    def kubernetes_defaults(self) -> dict[str, Any]:
        """Pod resources to use where the user gave none."""
        d = self.defaults
        return {k: v for k, v in (("cpu", d.cpu), ("memory", d.memory)) if v}


def config_files() -> list[str]:
    """Existing config files, lowest priority first (system before user)."""
    from jupyter_core.paths import jupyter_config_path

    found = []
    for directory in reversed(jupyter_config_path()):
        for ext in (".json", ".py"):
            path = os.path.join(directory, CONFIG_NAME + ext)
            if os.path.isfile(path):
                found.append(path)
    return found


def _load_file(path: str) -> Config:
    directory, name = os.path.split(path)
    loader_class = JSONFileConfigLoader if name.endswith(".json") else PyFileConfigLoader
    try:
        return loader_class(name, path=directory).load_config()
    except Exception as e:
        raise UsageError(
            f"the kubemagic config file {path} could not be read: {e}",
            fix="fix or remove that file (it is traitlets config: c.Kubemagic.max_engines = 8)",
        ) from None


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    """Load every config file once per process (a changed file needs a kernel restart)."""
    merged = Config()
    limit, source = 0, ""
    for path in config_files():
        cfg = _load_file(path)
        value = cfg.get("Kubemagic", {}).get("max_engines")
        if isinstance(value, int) and value > 0 and (not limit or value < limit):
            limit, source = value, path
        merged.merge(cfg)
    defaults = Kubemagic(config=merged)
    if limit:
        defaults.max_engines = limit
    return Settings(defaults=defaults, limit_source=source)
