"""Network namespaces that look like the StatefulSet, and a nemesis to break them.

`ChaosNet` builds, as root, one Linux bridge and one network namespace per host
(three nodes `ramraft-0..2` and a `client`), joined by veth pairs. Every
namespace gets a hosts file (`/etc/netns/<ns>/hosts`, which `ip netns exec`
bind-mounts over /etc/hosts) that gives each host the DNS names the
StatefulSet gives its pods::

    ramraft-0.ramraft-peers.<k8s-namespace>.svc.cluster.local

so a node started here with the peer list a pod would build finds its peers
exactly as in Kubernetes. Processes run inside the namespaces with their UTS
hostname set to the host name (as a pod's is), and the nemesis kills, pauses,
restarts and partitions them.

Rules of this module:
- Traffic stays inside the lab: the bridge has no address on the host unless
  `host_access=True`, and the namespaces have no default route, so nothing
  they send can leave the machine.
- Every name it creates starts with `rrc-<run id>` (namespaces, /etc/netns
  dirs) or `rrc<run id>` (links), where the run id is random, so parallel runs
  never clash. A state file in /run/ramraft-chaos/<run id>.json, written
  *before* anything else, names the owning process; `sweep()` removes the
  leftovers of runs whose owner is dead (a SIGKILLed pytest), and nothing else.
- Cleanup is idempotent and runs on `__exit__`, at interpreter exit (atexit)
  and on SIGTERM. Children get PR_SET_PDEATHSIG=SIGKILL from a spawner thread
  that lives as long as the lab, so a SIGKILLed owner takes its nodes with it.
- Partitions are nftables rules in each receiving namespace's input hook
  (packets are dropped, not refused, as a cut cable would). The lab keeps the
  set of blocked (src, dst) pairs; every change re-renders each namespace's
  chain atomically with one `nft -f -`.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import structlog

from tests.needs import not_installed

__all__ = [
    "DEFAULT_NODES",
    "PREFIX",
    "ChaosNet",
    "ChaosNetError",
    "Host",
    "ManagedProcess",
    "leftovers",
    "sweep",
    "unsupported_reason",
]

log = structlog.get_logger("ramraft.chaos.netns")

PREFIX = "rrc"
# The ports of k8s/statefulset.yaml: client gRPC, Raft peers, web tier.
GRPC_PORT, PEER_PORT, HTTP_PORT = 7000, 7001, 8080
# The data volume is mounted at CONTAINER_VOLUME, as the StatefulSet mounts
# its claim; the node keeps its data in a subdirectory it creates (0700),
# as in k8s/statefulset.yaml, where the volume's root belongs to root.
CONTAINER_VOLUME = "/var/lib/ramraft"
CONTAINER_DATA_DIR = "/var/lib/ramraft/data"
CONTAINER_UID = 10001  # the image's USER (Containerfile), owner of mounted data dirs
# podman's default rlimits for root containers fail to apply on this machine
# ("error setting rlimit ... operation not permitted"; scripts/build-image.sh).
PODMAN_RUN_FLAGS = (
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
)
DEFAULT_NODES: tuple[str, ...] = ("ramraft-0", "ramraft-1", "ramraft-2")
STATE_DIR = Path("/run/ramraft-chaos")
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
NFT_TABLE = "ramraft_chaos"
# Where lab subnets come from when the host joins the bridge (host_access):
# each run takes a /24 that no route on the host covers yet.
LAB_SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
_OWNED_WORKDIR_PREFIX = "ramraft-chaos-"
_RUN_ID_RE = re.compile(r"^[0-9a-f]{6}$")
_NETNS_RE = re.compile(rf"^{PREFIX}-([0-9a-f]{{6}})-[a-z0-9-]+$")
_LINK_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})(?:br|h\d+|n\d+)$")
_HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Runs after `setpriv --pdeathsig KILL`: sets the hostname in the new UTS
# namespace, checks that the owner ($1) is still our parent (had it died before
# setpriv armed PDEATHSIG, no signal would ever come), then the real command
# replaces the shell, so the pid we hold is the command's pid.
_SET_HOSTNAME_AND_EXEC = 'hostname "$0" && [ "$PPID" = "$1" ] && shift && exec "$@"'


class ChaosNetError(RuntimeError):
    """A lab operation failed (a command returned non-zero, a bad host name...)."""


# --------------------------------------------------------------------------
# Small helpers


def _cmd(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a setup command; return stdout; raise ChaosNetError with stderr on failure."""
    proc = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise ChaosNetError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def _pid_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(state: Mapping[str, Any]) -> bool:
    pid = state.get("owner_pid")
    if not isinstance(pid, int):
        return False
    return _pid_start_time(pid) == state.get("owner_start")


def _list_netns() -> list[str]:
    if not NETNS_RUN.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN.iterdir())


def _list_links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def _list_containers() -> list[str]:
    if shutil.which("podman") is None:
        return []
    out = _cmd(["podman", "ps", "--all", "--format", "{{.Names}}"], check=False)
    return sorted(out.split())


def _netns_pids(netns: str) -> list[int]:
    out = _cmd(["ip", "netns", "pids", netns], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def unsupported_reason() -> str | None:
    """Why this machine cannot run the lab, or None when it can.

    Checks for root, the tools (iproute2, nftables, util-linux, hostname) and
    then really creates a namespace with an nft table in it.
    """
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run as uid 0)"
    tools = {
        "ip": "iproute2",
        "nft": "nftables",
        "unshare": "util-linux",
        "setpriv": "util-linux",
        "hostname": "hostname",
    }
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        return not_installed(", ".join(missing), f"apt-get install -y {' '.join(missing)}")
    try:
        with ChaosNet(nodes=(), client=None) as probe:
            probe.probe_nft()
    except (ChaosNetError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot build network namespaces here: {exc}"
    return None


# --------------------------------------------------------------------------
# Sweeping leftovers of crashed runs


def _state_path(run_id: str) -> Path:
    return STATE_DIR / f"{run_id}.json"


def _read_state(run_id: str) -> dict[str, Any]:
    try:
        data = json.loads(_state_path(run_id).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def leftovers() -> dict[str, list[str]]:
    """Every lab resource on this machine, by run id (live runs included)."""
    found: dict[str, list[str]] = {}
    for ns in _list_netns():
        if m := _NETNS_RE.match(ns):
            found.setdefault(m.group(1), []).append(f"netns:{ns}")
    for link in _list_links():
        if m := _LINK_RE.match(link):
            found.setdefault(m.group(1), []).append(f"link:{link}")
    if NETNS_ETC.is_dir():
        for d in NETNS_ETC.iterdir():
            if m := _NETNS_RE.match(d.name):
                found.setdefault(m.group(1), []).append(f"etc:{d}")
    for ctr in _list_containers():
        if m := _NETNS_RE.match(ctr):
            found.setdefault(m.group(1), []).append(f"container:{ctr}")
    if STATE_DIR.is_dir():
        for f in STATE_DIR.glob("*.json"):
            if _RUN_ID_RE.match(f.stem):
                found.setdefault(f.stem, []).append(f"state:{f}")
    return found


def _remove_run(run_id: str, state: Mapping[str, Any]) -> None:
    """Remove every resource of one run; safe to call on a half-built run."""
    containers = [c for c in _list_containers() if c.startswith(f"{PREFIX}-{run_id}-")]
    if containers:
        _cmd(["podman", "rm", "--force", "--time", "0", *containers], check=False)
    namespaces = [ns for ns in _list_netns() if ns.startswith(f"{PREFIX}-{run_id}-")]
    for ns in namespaces:
        _kill_pids(_netns_pids(ns))
    for ns in namespaces:
        _cmd(["ip", "netns", "del", ns], check=False)
    for link in _list_links():
        if link.startswith(f"{PREFIX}{run_id}"):
            _cmd(["ip", "link", "del", link], check=False)
    if NETNS_ETC.is_dir():
        for d in NETNS_ETC.glob(f"{PREFIX}-{run_id}-*"):
            shutil.rmtree(d, ignore_errors=True)
    workdir = state.get("owned_workdir")
    # Only ever a temp dir this module made itself.
    if isinstance(workdir, str) and Path(workdir).name.startswith(_OWNED_WORKDIR_PREFIX):
        shutil.rmtree(workdir, ignore_errors=True)
    _state_path(run_id).unlink(missing_ok=True)


def sweep() -> list[str]:
    """Remove the resources of every run whose owner process is gone.

    Runs whose owner still lives are left alone, so a sweep never breaks a
    parallel test run. Returns the run ids removed.
    """
    removed = []
    for run_id in sorted(leftovers()):
        state = _read_state(run_id)
        if _owner_alive(state):
            continue
        _remove_run(run_id, state)
        removed.append(run_id)
    if removed:
        log.info("chaos.sweep", removed=removed)
    return removed


# --------------------------------------------------------------------------
# Hosts and processes


@dataclass(frozen=True, slots=True)
class Host:
    """One machine of the lab: a namespace with one address on the bridge."""

    name: str  # "ramraft-0", or "client"
    netns: str  # "rrc-1a2b3c-0"
    ip: str  # "10.213.7.2"
    fqdn: str  # "ramraft-0.ramraft-peers.default.svc.cluster.local"
    index: int


@dataclass(slots=True)
class ManagedProcess:
    """A long-running process inside a host's namespace, restartable as it was."""

    name: str
    host: Host
    argv: tuple[str, ...]  # what the caller asked to run
    command: tuple[str, ...]  # what is exec'd: argv wrapped for the namespace, or `podman run`
    env: dict[str, str]
    log_path: Path
    cwd: Path | None
    container: str | None = None  # the podman container name, for start_container()
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False
    exit_codes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ChaosNetError(f"process {self.name!r} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------
# The lab


_LIVE_LABS: set[ChaosNet] = set()
_LIVE_LOCK = threading.Lock()


def _teardown_live_labs() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE_LABS)
    for lab in labs:
        lab.teardown()


atexit.register(_teardown_live_labs)


class ChaosNet:
    """A bridge, a namespace per host, and a nemesis. Use as a context manager.

    >>> with ChaosNet(k8s_namespace="default") as net:          # doctest: +SKIP
    ...     for name in net.node_names:      # processes, configured as the pods are
    ...         net.start(name, ["ramraft", "node"], env=net.node_env(name))
    ...     # or the image:  net.start_container(name, "localhost/ramraft:0.1.0",
    ...     #                    env=net.node_env(name, data_dir=CONTAINER_DATA_DIR))
    ...     net.partition("ramraft-0"); ...; net.heal()
    ...     net.kill("ramraft-1"); net.restart("ramraft-1")
    """

    def __init__(
        self,
        nodes: Sequence[str] = DEFAULT_NODES,
        *,
        k8s_namespace: str = "default",
        service: str = "ramraft-peers",
        client: str | None = "client",
        workdir: Path | None = None,
        host_access: bool = False,
    ) -> None:
        names = [*nodes, *([client] if client else [])]
        for name in names:
            if not _HOST_NAME_RE.match(name):
                raise ChaosNetError(f"host name {name!r} is not a DNS label")
        if len(set(names)) != len(names):
            raise ChaosNetError(f"host names must be unique, got {names}")
        for label in (k8s_namespace, service):
            if not _HOST_NAME_RE.match(label):
                raise ChaosNetError(f"{label!r} is not a DNS label")
        self.run_id = secrets.token_hex(3)
        self.k8s_namespace = k8s_namespace
        self.service = service
        self.node_names: tuple[str, ...] = tuple(nodes)
        self.client_name = client
        self.host_access = host_access
        self.bridge = f"{PREFIX}{self.run_id}br"
        self._owned_workdir = workdir is None
        # A temporary workdir is made by setup(), so an unused lab leaves nothing.
        self._workdir: Path | None = Path(workdir) if workdir is not None else None
        self.subnet = self._pick_subnet() if host_access else ipaddress.IPv4Network("10.213.0.0/24")
        addrs = list(self.subnet.hosts())  # addrs[0] is the bridge's, if the host joins
        self.hosts: dict[str, Host] = {}
        for i, name in enumerate(names):
            # Nodes get the StatefulSet pod names; the client just its own name.
            fqdn = f"{name}.{service}.{k8s_namespace}.svc.cluster.local" if name in nodes else name
            self.hosts[name] = Host(
                name=name, netns=f"{PREFIX}-{self.run_id}-{i}", ip=str(addrs[i + 1]), fqdn=fqdn,
                index=i,
            )  # fmt: skip
        self.procs: dict[str, ManagedProcess] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._lock = threading.RLock()
        self._spawner: ThreadPoolExecutor | None = None
        self._set_up = False
        self._torn_down = False
        self._old_sigterm: Any = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def setup(self) -> None:
        """Build the bridge, namespaces, links, hosts files and nft tables."""
        if self._set_up:
            raise ChaosNetError("setup() called twice")
        self._set_up = True
        with _LIVE_LOCK:
            _LIVE_LABS.add(self)
        self._install_sigterm_handler()
        if self._owned_workdir:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{_OWNED_WORKDIR_PREFIX}{self.run_id}-"))
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        state = {
            "owner_pid": pid,
            "owner_start": _pid_start_time(pid),
            "owned_workdir": self._owned_workdir_str(),
            "hosts": [h.netns for h in self.hosts.values()],
        }
        _state_path(self.run_id).write_text(json.dumps(state))
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawner")
        log.info("chaos.setup", run_id=self.run_id, subnet=str(self.subnet), hosts=list(self.hosts))

    def _build(self) -> None:
        _cmd(["ip", "link", "add", self.bridge, "type", "bridge"])
        if self.host_access:
            gw = next(iter(self.subnet.hosts()))
            _cmd(["ip", "addr", "add", f"{gw}/{self.subnet.prefixlen}", "dev", self.bridge])
        _cmd(["ip", "link", "set", self.bridge, "up"])
        hosts_file = self._hosts_file()
        for h in self.hosts.values():
            etc = NETNS_ETC / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            # A resolver that answers nothing at once: no lookup leaves the lab.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            _cmd(["ip", "netns", "add", h.netns])
            outer, inner = f"{PREFIX}{self.run_id}h{h.index}", f"{PREFIX}{self.run_id}n{h.index}"
            _cmd(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
                  "netns", h.netns])  # fmt: skip
            _cmd(["ip", "link", "set", outer, "master", self.bridge, "up"])
            script = (
                "link set lo up\n"
                f"link set {inner} name eth0\n"
                f"addr add {h.ip}/{self.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n"
            )
            _cmd(["ip", "-n", h.netns, "-batch", "-"], input_text=script)
            self._nft(h, self._ruleset(h, frozenset()))
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        for name in self.node_names:
            self.data_dir(name).mkdir(parents=True, exist_ok=True)

    def teardown(self) -> None:
        """Kill every process, delete namespaces, links, /etc/netns dirs, state.

        Idempotent; never raises (errors are logged), so it is safe in finally
        blocks, atexit and signal handlers.
        """
        with self._lock:
            if self._torn_down or not self._set_up:
                self._torn_down = True
                return
            self._torn_down = True
        containers = [p.container for p in self.procs.values() if p.container is not None]
        if containers:
            _cmd(["podman", "rm", "--force", "--time", "0", *containers], check=False)
        for proc in self.procs.values():
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        try:
            _remove_run(self.run_id, {"owned_workdir": self._owned_workdir_str()})
        except Exception as exc:  # teardown must go on; sweep() catches what is left
            log.error("chaos.teardown_failed", run_id=self.run_id, error=str(exc))
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)
        self._restore_sigterm_handler()
        with _LIVE_LOCK:
            _LIVE_LABS.discard(self)
        log.info("chaos.teardown", run_id=self.run_id)

    @property
    def workdir(self) -> Path:
        """Logs and data dirs live here (a temp dir removed at teardown, unless given)."""
        if self._workdir is None:
            raise ChaosNetError("the lab has no workdir before setup()")
        return self._workdir

    def _owned_workdir_str(self) -> str:
        return str(self._workdir) if self._owned_workdir and self._workdir is not None else ""

    def _install_sigterm_handler(self) -> None:
        """Turn SIGTERM into SystemExit so context managers and atexit run."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm_handler(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        routes = _cmd(["ip", "-4", "-j", "route", "show", "table", "all"])
        taken = []
        for r in json.loads(routes or "[]"):
            dst = r.get("dst", "")
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.IPv4Network(dst if dst != "default" else "0.0.0.0/0"))
        candidates = list(LAB_SUPERNET.subnets(new_prefix=24))
        start = int(self.run_id, 16) % len(candidates)
        for net in candidates[start:] + candidates[:start]:
            if not any(net.overlaps(t) and t.prefixlen > 0 for t in taken):
                return net
        raise ChaosNetError(f"no free /24 left in {LAB_SUPERNET}")

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for h in self.hosts.values():
            if h.fqdn == h.name:
                lines.append(f"{h.ip}\t{h.name}")
                continue
            short = f"{h.name}.{self.service}"
            lines.append(f"{h.ip}\t{h.fqdn} {short}.{self.k8s_namespace} {short} {h.name}")
        return "\n".join(lines) + "\n"

    # -- addresses ---------------------------------------------------------

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ChaosNetError(f"no host {name!r}; hosts are {sorted(self.hosts)}") from None

    def fqdn(self, name: str) -> str:
        return self.host(name).fqdn

    def peers(self, port: int) -> str:
        """The --peers value a pod builds: `ramraft-0=<fqdn>:port,...`."""
        return ",".join(f"{n}={self.fqdn(n)}:{port}" for n in self.node_names)

    def endpoints(self, port: int) -> str:
        """`<fqdn>:port,...` for clients (the --endpoints form)."""
        return ",".join(f"{self.fqdn(n)}:{port}" for n in self.node_names)

    def node_env(self, name: str, *, data_dir: str | None = None) -> dict[str, str]:
        """The RAMRAFT_* environment the StatefulSet gives pod `name`.

        `data_dir` defaults to the lab's data dir for the node; pass
        CONTAINER_DATA_DIR for start_container(). A test checks this against
        k8s/statefulset.yaml, so a node started with it runs as it would in a pod.
        """
        if name not in self.node_names:
            raise ChaosNetError(f"{name!r} is not a node; nodes are {list(self.node_names)}")
        return {
            "RAMRAFT_ID": name,
            "RAMRAFT_PEERS": self.peers(PEER_PORT),
            "RAMRAFT_LISTEN": f"0.0.0.0:{GRPC_PORT}",
            "RAMRAFT_PEER_LISTEN": f"0.0.0.0:{PEER_PORT}",
            "RAMRAFT_HTTP": f"0.0.0.0:{HTTP_PORT}",
            "RAMRAFT_DATA_DIR": data_dir if data_dir is not None else str(self.data_dir(name)),
        }

    def data_dir(self, name: str) -> Path:
        """A node's persistent data dir: it survives kill/restart, not teardown."""
        self.host(name)
        return self.workdir / "data" / name

    # -- processes ---------------------------------------------------------

    def _wrap(self, host: Host, argv: Sequence[str]) -> list[str]:
        return [
            "ip", "netns", "exec", host.netns,
            "unshare", "--uts", "--",
            "setpriv", "--pdeathsig", "KILL", "--",
            "sh", "-c", _SET_HOSTNAME_AND_EXEC, host.name, str(os.getpid()),
            *argv,
        ]  # fmt: skip

    def _child_env(self, host: Host, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(os.environ)
        merged["HOSTNAME"] = host.name
        merged["POD_NAMESPACE"] = self.k8s_namespace
        if env:
            merged.update(env)
        return merged

    def start(
        self,
        host: str,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start a long-running process in `host`'s namespace.

        `name` (default: the host name) is the handle for kill/pause/restart.
        Its environment is ours plus HOSTNAME and POD_NAMESPACE (as in a pod)
        plus `env`; stdout and stderr append to `<workdir>/logs/<name>.log`.
        """
        self._check_live()
        h = self.host(host)
        key = name or host
        with self._lock:
            if key in self.procs and self.procs[key].alive():
                raise ChaosNetError(f"process {key!r} is already running")
            proc = ManagedProcess(
                name=key,
                host=h,
                argv=tuple(argv),
                command=tuple(self._wrap(h, argv)),
                env=self._child_env(h, env),
                log_path=self.workdir / "logs" / f"{key}.log",
                cwd=cwd,
            )
            self.procs[key] = proc
        self._spawn(proc)
        return proc

    def start_container(
        self,
        host: str,
        image: str,
        args: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        entrypoint: str | None = None,
        volumes: Mapping[Path | str, str] | None = None,
        workdir: str | None = None,
        podman_args: Sequence[str] = (),
    ) -> ManagedProcess:
        """Run `image` as a container in `host`'s namespace, as the StatefulSet runs it.

        The container joins the host's network namespace (so its address, DNS
        names and partitions are the host's), gets the host name as hostname,
        the lab's hosts and resolv.conf files, a read-only root, a tmpfs /tmp, no capabilities,
        no-new-privileges, and the host's data dir (owned by uid 10001, the
        image's user) at /var/lib/ramraft. kill/pause/resume/restart act on the
        container (podman kill/pause); exit codes are podman's (137 = SIGKILL).
        """
        self._check_live()
        if shutil.which("podman") is None:
            raise ChaosNetError("podman is not installed (apt-get install -y podman runc)")
        h = self.host(host)
        key = name or host
        ctr = f"{h.netns}-{key}"
        data = self.data_dir(host) if host in self.node_names else None
        etc = NETNS_ETC / h.netns
        mounts: dict[str, str] = {
            str(etc / "hosts"): "/etc/hosts:ro",
            str(etc / "resolv.conf"): "/etc/resolv.conf:ro",
        }
        if data is not None:
            data.mkdir(parents=True, exist_ok=True)
            os.chown(data, CONTAINER_UID, CONTAINER_UID)
            mounts[str(data)] = CONTAINER_VOLUME
        mounts.update({str(k): v for k, v in (volumes or {}).items()})
        argv: list[str] = [
            "podman", "run", "--rm", *PODMAN_RUN_FLAGS,
            "--name", ctr,
            "--network", f"ns:{NETNS_RUN / h.netns}",
            "--hostname", h.name,
            "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--env", f"POD_NAMESPACE={self.k8s_namespace}",
        ]  # fmt: skip
        for src, dst in mounts.items():
            argv += ["--volume", f"{src}:{dst}"]
        for k, v in (env or {}).items():
            argv += ["--env", f"{k}={v}"]
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint]
        if workdir is not None:
            argv += ["--workdir", workdir]
        argv += [*podman_args, image, *args]
        with self._lock:
            if key in self.procs and self.procs[key].alive():
                raise ChaosNetError(f"process {key!r} is already running")
            proc = ManagedProcess(
                name=key,
                host=h,
                argv=tuple(args),
                command=tuple(argv),
                env=dict(os.environ),
                log_path=self.workdir / "logs" / f"{key}.log",
                cwd=None,
                container=ctr,
            )
            self.procs[key] = proc
        self._spawn(proc)
        return proc

    def _podman(self, *args: str) -> None:
        _cmd(["podman", *args], check=False)

    def _spawn(self, proc: ManagedProcess) -> None:
        assert self._spawner is not None
        proc.starts += 1
        proc.paused = False
        with proc.log_path.open("ab") as f:
            f.write(f"=== start #{proc.starts} at {time.time():.3f}: {proc.argv}\n".encode())

        def launch() -> subprocess.Popen[bytes]:
            with proc.log_path.open("ab") as out:
                return subprocess.Popen(
                    proc.command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=proc.env,
                    cwd=proc.cwd,
                    start_new_session=True,  # own process group: killpg reaches children
                )

        # Spawned from one long-lived thread: PDEATHSIG fires when the *thread*
        # that forked the child exits, so a short-lived nemesis thread must
        # never be the parent.
        proc.popen = self._spawner.submit(launch).result()
        log.info("chaos.start", proc=proc.name, host=proc.host.name, pid=proc.popen.pid)

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in `host`'s namespace (no check)."""
        self._check_live()
        h = self.host(host)
        return subprocess.run(
            self._wrap(h, argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._child_env(h, env),
            check=False,
        )

    def proc(self, name: str) -> ManagedProcess:
        try:
            return self.procs[name]
        except KeyError:
            raise ChaosNetError(f"no process {name!r}; started: {sorted(self.procs)}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL, *, wait: float = 10.0) -> int | None:
        """Send `sig` to the process group; for SIGKILL/SIGTERM wait for the exit.

        Returns the exit code when the process has exited (negative: killed by
        that signal), None if it is still running.
        """
        proc = self.proc(name)
        if not proc.alive():
            return proc.returncode()
        if proc.paused and sig == signal.SIGTERM:
            self.resume(name)  # a stopped process cannot act on TERM
        if proc.container is not None:
            self._podman("kill", "--signal", signal.Signals(sig).name, proc.container)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM) and proc.popen is not None:
            try:
                code = proc.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                return None
            proc.exit_codes.append(code)
            proc.paused = False
            log.info("chaos.exit", proc=name, signal=signal.Signals(sig).name, code=code)
            return code
        return None

    def stop(self, name: str, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        code = self.kill(name, signal.SIGTERM, wait=timeout)
        if code is None:
            code = self.kill(name, signal.SIGKILL)
        assert code is not None
        return code

    def restart(self, name: str) -> ManagedProcess:
        """Start a stopped process again with the same argv, env and data dir."""
        self._check_live()
        proc = self.proc(name)
        if proc.alive():
            raise ChaosNetError(f"process {name!r} is still running; kill it first")
        self._spawn(proc)
        return proc

    def pause(self, name: str) -> None:
        """SIGSTOP the process group: a long GC pause, the sockets stay open."""
        proc = self.proc(name)
        if proc.container is not None:
            self._podman("pause", proc.container)  # the cgroup freezer
        else:
            os.killpg(proc.pid, signal.SIGSTOP)
        proc.paused = True

    def resume(self, name: str) -> None:
        proc = self.proc(name)
        if proc.container is not None:
            self._podman("unpause", proc.container)
        else:
            os.killpg(proc.pid, signal.SIGCONT)
        proc.paused = False

    # -- network faults ----------------------------------------------------

    def blocked(self) -> frozenset[tuple[str, str]]:
        """The (src, dst) host pairs whose packets are dropped now."""
        return frozenset(self._blocked)

    def drop(self, src: str, dst: str) -> None:
        """One-way fault: drop every packet from `src` to `dst` (not back)."""
        self._block({(self.host(src).name, self.host(dst).name)})

    def partition(self, name: str, *, include_client: bool = False) -> None:
        """Cut `name` off from the other nodes, both ways.

        The client host still reaches it unless include_client: a minority
        node keeps receiving requests, as behind a broken switch port.
        """
        others = [n for n in self.node_names if n != name]
        if include_client and self.client_name:
            others.append(self.client_name)
        self.split([name], others)

    def split(self, *groups: Iterable[str]) -> None:
        """Drop traffic, both ways, between every two hosts in different groups.

        Hosts named in no group keep talking to everyone.
        """
        sets = [{self.host(n).name for n in g} for g in groups]
        if len(sets) < 2:
            raise ChaosNetError("split() needs at least two groups")
        seen: set[str] = set()
        for s in sets:
            if s & seen:
                raise ChaosNetError(f"host(s) {sorted(s & seen)} in more than one group")
            seen |= s
        pairs = set()
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        pairs |= {(x, y), (y, x)}
        self._block(pairs)

    def heal(self) -> None:
        """Remove every network fault."""
        with self._lock:
            self._blocked.clear()
            self._apply_rules()
        log.info("chaos.heal")

    def _block(self, pairs: set[tuple[str, str]]) -> None:
        with self._lock:
            self._blocked |= pairs
            self._apply_rules()
        log.info("chaos.block", pairs=sorted(pairs))

    def _apply_rules(self) -> None:
        self._check_live()
        blocked = frozenset(self._blocked)
        for h in self.hosts.values():
            self._nft(h, self._ruleset(h, blocked))

    def _ruleset(self, h: Host, blocked: frozenset[tuple[str, str]]) -> str:
        """The whole table for one namespace: drop input from blocked sources."""
        sources = sorted(self.hosts[src].ip for src, dst in blocked if dst == h.name)
        rules = f"        ip saddr {{ {', '.join(sources)} }} drop\n" if sources else ""
        # "add table; delete table; table {...}" replaces it atomically.
        return (
            f"add table inet {NFT_TABLE}\n"
            f"delete table inet {NFT_TABLE}\n"
            f"table inet {NFT_TABLE} {{\n"
            "    chain input {\n"
            "        type filter hook input priority filter; policy accept;\n"
            f"{rules}"
            "    }\n"
            "}\n"
        )

    def _nft(self, h: Host, script: str) -> None:
        _cmd(["ip", "netns", "exec", h.netns, "nft", "-f", "-"], input_text=script)

    def nft_ruleset(self, name: str) -> str:
        """`nft list ruleset` inside a host's namespace (for tests and logs)."""
        return _cmd(["ip", "netns", "exec", self.host(name).netns, "nft", "list", "ruleset"])

    def probe_nft(self) -> None:
        """Create and list an nft table in a scratch namespace (support check)."""
        ns = f"{PREFIX}-{self.run_id}-probe"
        _cmd(["ip", "netns", "add", ns])
        try:
            _cmd(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                 input_text=f"table inet {NFT_TABLE} {{\n}}\n")  # fmt: skip
            _cmd(["ip", "netns", "exec", ns, "nft", "list", "tables"])
        finally:
            _cmd(["ip", "netns", "del", ns], check=False)

    def _check_live(self) -> None:
        if not self._set_up or self._torn_down:
            raise ChaosNetError("the lab is not set up (or already torn down)")

    # -- debugging ---------------------------------------------------------

    def logs(self) -> Iterator[tuple[str, str]]:
        """(process name, log text) for every process started, for failure reports."""
        for name, proc in sorted(self.procs.items()):
            yield name, proc.log_text()


if __name__ == "__main__":  # `python -m tests.chaos.netns sweep|list`
    import sys

    cmd = sys.argv[1] if len(sys.argv) > 1 else "list"
    if cmd == "sweep":
        for rid in sweep():
            sys.stdout.write(f"removed run {rid}\n")
    elif cmd == "list":
        for rid, items in sorted(leftovers().items()):
            alive = "live" if _owner_alive(_read_state(rid)) else "dead"
            sys.stdout.write(f"{rid} ({alive}): {' '.join(items)}\n")
    else:
        sys.exit("usage: python -m tests.chaos.netns [list|sweep]")
