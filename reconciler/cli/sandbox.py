"""`sandbox up|down|demo`: a local two-site Ceph world and API server for demos and tests.

The sandbox is an extra (`pip install rbd-mirror-reconciler[sandbox]`), not part of the
controller: its modules are imported by these commands only, never when the CLI is built, so
`run` works in an image without them (or their `cryptography`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.cli.common import EXIT_USAGE
from reconciler.cli.flags import positive_int
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.sandbox.checkout import Checkout

DEFAULT_DIR = Path("/tmp/rbd-mirror-reconciler-sandbox")
STATE_FILE = "sandbox.json"
SOURCE_HELP = (
    "a checkout of this repository: its crds/, config/ and hack/build-kube.sh are used "
    "(default: the current directory)"
)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "sandbox",
        help="start or stop a local two-site Ceph pair replicating with rbd-mirror",
        description=(
            "A local disaster-recovery lab: two single-node Ceph clusters, site-a and site-b, "
            "mirroring one pool with snapshot-based rbd mirroring and the real rbd-mirror "
            "daemon. The pool has a different ID on each site, as after a real failover."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the pair and print how to reach it (JSON)")
    up.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"where all state and logs go (default {DEFAULT_DIR}); must not exist",
    )
    up.add_argument("--pool", default="replicapool", help="the mirrored pool (default %(default)s)")
    up.add_argument(
        "--failback",
        action="store_true",
        help="also run an rbd-mirror daemon on site-a (two-way mirroring)",
    )
    up.add_argument(
        "--with-k8s",
        action="store_true",
        help="also start a real etcd + kube-apiserver + kube-controller-manager "
        "(built by `make kube-bins`) and print its admin kubeconfig path",
    )
    up.add_argument("--source", type=Path, default=None, metavar="DIR", help=SOURCE_HELP)
    up.set_defaults(func=cmd_up)
    down = actions.add_parser("down", help="stop every daemon `sandbox up` started, by PID")
    down.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"the directory given to `sandbox up` (default {DEFAULT_DIR})",
    )
    down.set_defaults(func=cmd_down)
    demo = actions.add_parser(
        "demo",
        help="a real failover end to end: provision on site-a, mirror, lose site-a, "
        "regenerate the journal on site-b (what `make demo` runs)",
    )
    demo.add_argument(
        "--dir", type=Path, default=None, help="where state and logs go (default: a new temp dir)"
    )
    demo.add_argument("--source", type=Path, default=None, metavar="DIR", help=SOURCE_HELP)
    demo.add_argument(
        "--volumes",
        type=positive_int,
        default=3,
        help="how many volumes fail over (default %(default)s; a few hundred show the "
        "controller's progress log; mirroring them takes minutes)",
    )
    demo.set_defaults(func=cmd_demo)


def checkout_of(args: argparse.Namespace) -> Checkout | None:
    """The checkout `--source` names (else the current directory), or None after saying why
    it is not one."""
    from reconciler.sandbox.checkout import Checkout  # noqa: PLC0415  (an extra: see above)
    from reconciler.sandbox.errors import NotACheckout  # noqa: PLC0415

    try:
        return Checkout.at(args.source or Path.cwd())
    except NotACheckout as err:
        print(f"sandbox: {err}", file=sys.stderr)
        return None


def cmd_up(args: argparse.Namespace) -> int:
    # The sandbox is an extra: imported by its commands only (see the module docstring).
    from reconciler.sandbox.errors import SandboxError  # noqa: PLC0415
    from reconciler.sandbox.kube import KubeBinaries, KubeSandbox  # noqa: PLC0415
    from reconciler.sandbox.pair import start_pair  # noqa: PLC0415

    checkout = checkout_of(args) if args.with_k8s else None
    if args.with_k8s and checkout is None:
        return EXIT_USAGE
    if (args.dir / STATE_FILE).exists():
        print(
            f"sandbox: {args.dir} already holds a sandbox; run `sandbox down --dir {args.dir}`",
            file=sys.stderr,
        )
        return 1
    try:
        pair = start_pair(args.dir, args.pool, mirror_daemon_on_a=args.failback)
    except SandboxError as err:
        print(f"sandbox: {err}", file=sys.stderr)
        return 1
    description = pair.describe()
    records = pair.daemon_records()
    if checkout is not None:
        try:
            kube = KubeSandbox(args.dir / "kube", KubeBinaries.locate(checkout)).start()
        except SandboxError as err:
            pair.stop()  # nothing may be left running after a failed start
            print(f"sandbox: {err}", file=sys.stderr)
            return 1
        records += kube.daemon_records()
        description["kubernetes"] = {
            "kubeconfig": str(kube.kubeconfig),
            "server": kube.server,
            "startedInSeconds": round(kube.start_seconds, 1),
        }
        print(f"sandbox: export KUBECONFIG={kube.kubeconfig}", file=sys.stderr)
    state = {"daemons": records, **description}
    (args.dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    print(json.dumps(description, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo also needs Ceph's bindings: importing it here keeps the CLI usable without them.
    from reconciler.sandbox.demo import run_demo  # noqa: PLC0415
    from reconciler.sandbox.errors import SandboxError  # noqa: PLC0415

    checkout = checkout_of(args)
    if checkout is None:
        return EXIT_USAGE
    try:
        return run_demo(checkout, args.dir, volumes=args.volumes)
    except (SandboxError, ReconcilerError) as err:
        print(f"demo: FAILED: {err}", file=sys.stderr)
        return 1


def cmd_down(args: argparse.Namespace) -> int:
    from reconciler.sandbox.process import pid_runs, stop_pid  # noqa: PLC0415

    state_file = args.dir / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        print(f"sandbox: no sandbox in {args.dir} ({state_file} is missing)", file=sys.stderr)
        return 1
    # Newest first: rbd-mirror and the mgrs go before the OSDs and mons they talk to.
    for record in reversed(state["daemons"]):
        stop_pid(int(record["pid"]), str(record["executable"]))
    left = [r["name"] for r in state["daemons"] if pid_runs(int(r["pid"]), str(r["executable"]))]
    if left:
        print(f"sandbox: still running: {', '.join(left)}", file=sys.stderr)
        return 1
    state_file.unlink()
    print(f"sandbox: stopped {len(state['daemons'])} daemons in {args.dir}")
    return 0
