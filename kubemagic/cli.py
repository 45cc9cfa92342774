"""The ``kubemagic`` command (also ``python -m kubemagic``).

Subcommands::

    kubemagic demo     start engines, run a real CPU-bound map, print results and timings
    kubemagic rbac     print the least-privilege ServiceAccount/Role/RoleBinding/NetworkPolicy
    kubemagic doctor   check that the Kubernetes backend can work here (pass/fail table)
    kubemagic ls       kubemagic Jobs in a namespace: owner, age, engines, state
    kubemagic clean    delete leftover kubemagic Jobs and Secrets

Every subcommand returns an exit code: 0 on success, 1 when a check or an action failed,
2 for bad usage. Errors are one message with a "how to fix" line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

from .backends import backend_choices
from .backends.options import FLAG_GROUP, given_options, option_flags, whole_number
from .errors import KubemagicError, UsageError

#: numbers per demo item: each item walks the Collatz chains of one block of numbers
DEMO_BLOCK = 1000


# -- demo ------------------------------------------------------------------------------------
def collatz_block(block: int) -> tuple[int, int]:
    """The longest Collatz chain starting in ``[block*1000+1, (block+1)*1000]``.

    Returns ``(start, steps)``. Pure Python integer work (~10 ms per block): CPU-bound, so
    engines in separate processes (or pods) run it in parallel where threads could not.
    Defined at module level so engines import it by reference (kubemagic is installed
    beside every engine).
    """
    best_start, best_steps = 0, -1
    for start in range(block * DEMO_BLOCK + 1, (block + 1) * DEMO_BLOCK + 1):
        n, steps = start, 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best_steps:
            best_start, best_steps = start, steps
    return best_start, best_steps


def cmd_demo(args: argparse.Namespace) -> int:
    """Start engines, map :func:`collatz_block` over ``--items`` blocks, stop, report."""
    from . import KubeCluster

    items = list(range(args.items))
    out = sys.stdout
    print(
        f"kubemagic demo: {args.engines} {args.backend} engine(s), {len(items)} items "
        f"(longest Collatz chain in each block of {DEMO_BLOCK:,} numbers)",
        file=out, flush=True,
    )
    # a serial estimate from a small local sample, to show what the engines bought
    sample = items[:: max(1, len(items) // 10)]  # spread out: later blocks cost more
    t = time.perf_counter()
    local_sample = [collatz_block(i) for i in sample]
    serial_per_item = (time.perf_counter() - t) / max(len(sample), 1)

    t0 = time.perf_counter()
    cluster = KubeCluster(n=args.engines, backend=args.backend, **given_options(args))
    try:
        cluster.start()
        t_start = time.perf_counter() - t0
        ready = len(cluster.ready_ids())
        print(f"  start-up  {t_start:7.2f} s   {ready}/{args.engines} engines ready "
              f"({cluster.backend} backend)", file=out, flush=True)
        t1 = time.perf_counter()
        results = cluster.map(collatz_block, items, progress=out.isatty())
        t_map = time.perf_counter() - t1
    finally:
        t2 = time.perf_counter()
        cluster.stop()
        t_stop = time.perf_counter() - t2

    rate = len(items) / t_map if t_map > 0 else float("inf")
    speedup = serial_per_item * len(items) / t_map if t_map > 0 else float("inf")
    print(f"  map       {t_map:7.2f} s   {rate:,.0f} items/s, {speedup:.1f}x the serial "
          f"speed of this process", file=out)
    start, steps = max(results, key=lambda r: r[1])
    print(f"  result    longest chain below {len(items) * DEMO_BLOCK:,} starts at {start:,}: "
          f"{steps} steps", file=out)
    same = [results[i] for i in sample] == local_sample
    print(f"  check     {len(sample)} items re-computed locally: "
          f"{'identical' if same else 'DIFFERENT'}", file=out)
    print(f"  stop      {t_stop:7.2f} s", file=out, flush=True)
    return 0 if same and len(results) == len(items) else 1


# -- rbac ------------------------------------------------------------------------------------
def cmd_rbac(argv: Sequence[str]) -> int:
    """``kubemagic rbac ...``: the backend's own renderer, with its own options."""
    try:
        from .k8s.rbac import main_rbac
    except ImportError as e:
        print(f"kubemagic rbac is not available: {e}", file=sys.stderr)
        return 1
    return int(main_rbac(list(argv)) or 0)


# -- doctor, ls, clean -----------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from .k8s.doctor import run_doctor

    return run_doctor(
        namespace=args.namespace, image=args.image, service_account=args.service_account,
        controller_address=args.controller_address, port_range=args.port_range,
        kubeconfig=args.kubeconfig, context=args.context, timeout=args.timeout,
    )


def cmd_ls(args: argparse.Namespace) -> int:
    from .k8s.admin import list_jobs, print_jobs

    rows = list_jobs(namespace=args.namespace, kubeconfig=args.kubeconfig,
                     context=args.context, all_namespaces=args.all_namespaces)
    print_jobs(rows, show_namespace=args.all_namespaces)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from .k8s.admin import clean

    return clean(namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context,
                 dry_run=args.dry_run, all_owners=args.all_owners, owner=args.owner,
                 wait=not args.no_wait)


# -- parser ----------------------------------------------------------------------------------
def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """Every engine option of every backend, spelled as in the magic (declared by the
    backends: :func:`kubemagic.backends.options.option_flags`)."""
    group = p.add_argument_group(*FLAG_GROUP)
    for flag in option_flags():
        group.add_argument(*flag.args, **flag.kwargs)


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", "-N", default=None,
                   help="namespace (default: the pod's, else the kubeconfig context's)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG "
                   "or ~/.kube/config; in a pod the service account)")
    p.add_argument("--context", default=None, help="kubeconfig context")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubemagic",
        description="Fan a Python function out over ipyparallel engines: local processes "
        "or pods of a Kubernetes Job. In Jupyter: %load_ext kubemagic, then %%kubemap.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"kubemagic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a real map on engines and print results and timings",
                          description="Start engines (2 local processes by default), map a "
                          "CPU-bound function over a few hundred items, print the results "
                          "summary and timings, stop the engines.")
    demo.add_argument("--engines", "-n", type=_positive_int, default=2, help="engines (default 2)")
    demo.add_argument("--items", type=_positive_int, default=400,
                      help="items to map (default 400)")
    demo.add_argument("--backend", choices=backend_choices(), default="local",
                      help="where engines run (default local)")
    _add_engine_args(demo)
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("rbac", add_help=False,
                   help="print the least-privilege RBAC (and NetworkPolicy) for the backend "
                   "(see `kubemagic rbac --help`)")

    doctor = sub.add_parser(
        "doctor", help="check that the Kubernetes backend can work here",
        description="Checks, in a pass/fail table: the API is reachable, every permission "
        "the backend needs (SelfSubjectAccessReview against the Role `kubemagic rbac` "
        "prints), the namespace exists, the image is resolvable (a test pod runs it) and "
        "that pod reaches the controller port range on the advertised address. Exit code 1 "
        "if any check fails; each failure says how to fix it.")
    _add_cluster_args(doctor)
    doctor.add_argument("--image", default=None,
                        help="engine image to test (default: $JUPYTER_IMAGE_SPEC)")
    doctor.add_argument("--service-account", default=None,
                        help="service account named in the fix advice (default: the one "
                        "the API sees you as, else 'kubemagic')")
    doctor.add_argument("--controller-address", default=None,
                        help="address engine pods use to reach the kernel (default: "
                        "detected like the backend does)")
    doctor.add_argument("--port-range", default=None,
                        help="controller port range LOW-HIGH (default: the backend's)")
    doctor.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the test pod (default 120)")
    doctor.set_defaults(func=cmd_doctor)

    ls = sub.add_parser("ls", help="list kubemagic Jobs: owner, age, engines, state")
    _add_cluster_args(ls)
    ls.add_argument("--all-namespaces", "-A", action="store_true",
                    help="every namespace (needs cluster-wide list on jobs)")
    ls.set_defaults(func=cmd_ls)

    clean = sub.add_parser("clean", help="delete leftover kubemagic Jobs and their Secrets",
                           description="Delete kubemagic Jobs (foreground: their pods go "
                           "first) and Secrets in the namespace. By default only yours "
                           "(label kubemagic.io/owner = your user); this also stops engines "
                           "of sessions that are still running.")
    _add_cluster_args(clean)
    clean.add_argument("--dry-run", action="store_true", help="only print what would go")
    clean.add_argument("--all-owners", action="store_true", help="everyone's, not only yours")
    clean.add_argument("--owner", default=None, help="this owner's (default: you)")
    clean.add_argument("--no-wait", action="store_true",
                       help="do not wait until the Jobs' pods are gone")
    clean.set_defaults(func=cmd_clean)
    return parser


def _positive_int(text: str) -> int:
    """argparse's type for counts: the shared check (:func:`whole_number`), failing as a
    usage error of the flag argparse names."""
    try:
        return whole_number(text, "value")
    except UsageError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kubemagic`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "rbac":
        return cmd_rbac(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KubemagicError as e:
        print(f"kubemagic {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kubemagic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
