"""The Kubernetes engine launcher's configuration, as traitlets.

One trait per Kubernetes option the launcher carries (the ``launcher`` and ``manifest``
fields of :class:`.options.KubernetesOptions`), generated from that dataclass: plain
ipyparallel (``c.KubernetesEngineSetLauncher.node_selector = {"gpu": "true"}``) and the
magic (``--node-selector gpu=true``) accept the same options, checked by the same parsers,
and there is no second list to keep in step. The traits are untyped on purpose: the
option's parser is the type, and it takes a config file's dict as well as a command
line's ``gpu=true``. Then the launcher's own settings, which are not engine options.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, Field, fields

from traitlets import Any as AnyTrait
from traitlets import Bool, Float, Integer, List, TraitType, Unicode, default
from traitlets.config import LoggingConfigurable

from ..backends.options import declared
from . import incluster
from .options import KubernetesOptions, parse_options

#: the options that are launcher traits of their own name (``env`` is ipyparallel's
#: ``environment``, which also carries ipyparallel's variables: it is not re-checked)
OPTION_TRAITS = tuple(
    name for name, opt in declared(KubernetesOptions).items()
    if opt.layer in ("launcher", "manifest") and not opt.target
)


def _trait(f: Field) -> TraitType:
    """The option's trait: its default, its help; the launcher's own (``launcher``) ones are
    saved in ipyparallel's cluster file, so a new kernel can reattach to the Job."""
    opt = declared(KubernetesOptions)[f.name]
    value = None if f.default is MISSING else f.default  # factories: None is the default
    trait = AnyTrait(value, allow_none=True, config=True, help=opt.help)
    return trait.tag(to_dict=True) if opt.layer == "launcher" else trait


_OptionTraits = types.new_class(
    "KubernetesOptionTraits",
    (LoggingConfigurable,),
    exec_body=lambda ns: ns.update(
        {f.name: _trait(f) for f in fields(KubernetesOptions) if f.name in OPTION_TRAITS},
        __module__=__name__,
    ),
)


class LauncherConfig(_OptionTraits):  # type: ignore[misc,valid-type]
    """The option traits, the launcher's own settings and the state ipyparallel persists."""

    backoff_limit_per_index = Integer(
        100,
        config=True,
        help="Crashes of one engine slot tolerated before that slot stays down "
        "(evictions and deletions do not count).",
    )
    startup_crash_window = Float(
        60.0,
        config=True,
        help="Seconds after the start in which engines crashing before they register mean a "
        "crash loop: when half the slots' worth of engine pods (at least 2) do, the engine "
        "set stops and its Job is deleted, instead of being retried for minutes (0: never).",
    )
    owner_reference_to_kernel_pod = Bool(
        True,
        config=True,
        help="When the kernel runs in a pod of the same namespace, make that pod own the "
        "Job, so deleting the notebook server deletes its engines.",
    )
    engine_cmd = List(
        ["python", "-m", "kubemagic.k8s.engine"],
        config=True,
        help="Command of the engine container (its arguments are engine_args).",
    )

    # -- state persisted by ipyparallel's cluster file --

    job_name = Unicode("").tag(to_dict=True)
    job_uid = Unicode("").tag(to_dict=True)
    #: where engines register (tcp://address:port), quoted by diagnostics
    controller_url = Unicode("").tag(to_dict=True)

    @default("namespace")
    def _default_namespace(self) -> str:
        return incluster.default_namespace(self.kubeconfig or None, self.context or None)

    def options(self) -> KubernetesOptions:
        """The launcher's configuration, checked like the magic's flags (same errors)."""
        return parse_options(**{name: getattr(self, name) for name in OPTION_TRAITS})
