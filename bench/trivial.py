"""Phase "trivial": the gateway's own cost, with a nearly free Triton model so that YOLOX's ~45 ms
per image hides nothing. Triton's `header_detector` (tests/model_repository: yolox_nano's tensors,
one box read from the image header) answers every arm, in interleaved rounds at each concurrency:
the vision-grpc variants of SERVER_ARMS, direct Triton with one shared client and with a client per
request (the seed's pattern), the FastAPI peer (bench/peer_fastapi.py) and the bare grpc.aio
floor (bench/floor_grpc.py: the same Triton call and nothing else). Then one arm pair with
real detection (vision-grpc vs the peer on yolox_nano), and a py-spy profile of each vision-grpc
variant under the trivial load, ranked by function (own and total time)."""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc

from bench.load import Kind, RunSpec
from bench.measure import Measured, Meter
from bench.payloads import ROOT, PayloadName
from bench.procs import ListeningProcess, ProcessGroup, ServerProcess
from bench.stats import paired_ratio, spread
from bench.suite import Budget, Env, Json, profile, rotated, summarize
from bench.targets import ENSEMBLE
from tools.local_triton import REPO_ROOT

TEST_REPOSITORY = ROOT / "tests" / "model_repository"
TRIVIAL_MODEL = "header_detector"
IMAGES: PayloadName = "small"


# Every variant's arguments before its own: the trivial model by default, and admission limits
# above the highest concurrency measured (its defaults suit YOLOX on 2 cores and would refuse
# most of 64 trivial calls in flight): the arms compare gateway cost, not load shedding.
SERVER_BASE_ARGS = ("--detection.default-model", TRIVIAL_MODEL,
                    "--admission.max-in-flight", "256", "--admission.peer-share", "1.0")


@dataclass(frozen=True)
class ServerArm:
    """A vision-grpc variant: its name in the report and its extra `python -m server` arguments
    (after the bench's own and SERVER_BASE_ARGS)."""

    name: str
    args: tuple[str, ...] = ()
    profiled: bool = True  # py-spy samples one process: set False for a multi-process variant


# The vision-grpc variants measured against the same direct and peer arms, each its own server
# process. A variant is one more line here, with flags the server has (it refuses unknown ones
# at start-up), e.g.
#   ServerArm("vision-grpc 2 workers", ("--workers", "2"), profiled=False),
SERVER_ARMS: tuple[ServerArm, ...] = (
    ServerArm("vision-grpc"),
    ServerArm("vision-grpc, aggregation off", ("--aggregation.enabled", "false")),
    ServerArm("vision-grpc, 2 workers", ("--workers", "2"), profiled=False),
)
DIRECT = "Triton direct (shared client)"
PER_REQUEST = "Triton direct (client per request)"
PEER = "FastAPI peer"
FLOOR = "bare grpc.aio servicer"


@dataclass(frozen=True)
class Plan:
    """How long and how often this phase measures (full run or --quick)."""

    reps: int
    run_s: float
    concurrencies: tuple[int, ...]
    detection_concurrency: int
    detection_run_s: float
    profile_concurrency: int


FULL_PLAN = Plan(reps=5, run_s=3.0, concurrencies=(1, 16, 64), detection_concurrency=16,
                 detection_run_s=5.0, profile_concurrency=16)
QUICK_PLAN = Plan(reps=2, run_s=1.0, concurrencies=(1, 16), detection_concurrency=16,
                  detection_run_s=1.5, profile_concurrency=16)
NATIVE_RATE_HZ = 100  # py-spy --native falls behind at 250 Hz on this box
PEER_READY_TIMEOUT_S = 60.0
PEER_STOP_GRACE_S = 10.0
RANKED_FUNCTIONS = 30


class PeerProcess(ListeningProcess):
    """`python -m bench.peer_fastapi`; the first of models is its default."""

    stop_grace_s = PEER_STOP_GRACE_S
    name = "FastAPI peer"

    def __init__(self, triton_url: str, log_path: Path, models: tuple[str, ...]) -> None:
        super().__init__(lambda port: [
            sys.executable, "-m", "bench.peer_fastapi", "--port", str(port),
            "--triton-url", triton_url, "--models", *models], log_path)

    def wait_serving(self, timeout: float = PEER_READY_TIMEOUT_S) -> None:
        """Until GET /health answers 200 (the client made, Triton's default model ready)."""
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://{self.address}/health", timeout=1.0) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self.wait_until(healthy, timeout)


class FloorProcess(ListeningProcess):
    """`python -m bench.floor_grpc`."""

    stop_grace_s = PEER_STOP_GRACE_S
    name = "floor servicer"

    def __init__(self, triton_url: str, log_path: Path, model: str) -> None:
        super().__init__(lambda port: [
            sys.executable, "-m", "bench.floor_grpc", "--port", str(port),
            "--triton-url", triton_url, "--model", model], log_path)

    def wait_serving(self, timeout: float = PEER_READY_TIMEOUT_S) -> None:
        """Until its port takes a gRPC connection (it has no health service)."""
        with grpc.insecure_channel(self.address) as channel:
            def connected() -> bool:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                except grpc.FutureTimeoutError:
                    return False
                return True

            self.wait_until(connected, timeout)


def _figure(measured: Measured, figure: str) -> float:
    if figure == "gateway_cpu_ms":
        return measured.cpu_ms.get("gateway", math.nan)
    return float(getattr(measured, figure))


def _ratio(a: list[Measured], b: list[Measured], figure: str) -> Json:
    return asdict(paired_ratio([_figure(m, figure) for m in a], [_figure(m, figure) for m in b]))


def _difference(a: list[Measured], b: list[Measured], figure: str) -> Json:
    """Per-round differences a_i − b_i of runs from the same round."""
    return asdict(spread([_figure(x, figure) - _figure(y, figure)
                          for x, y in zip(a, b, strict=True)]))


def _ratio_plan(server_arms: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(numerator arm, denominator arm, figure) of every ratio the section reports."""
    plan = []
    for arm in server_arms:
        plan += [(arm, DIRECT, "throughput"), (arm, PEER, "throughput"),
                 (arm, PEER, "gateway_cpu_ms"), (arm, FLOOR, "gateway_cpu_ms")]
    return plan + [(PEER, DIRECT, "throughput"), (FLOOR, PEER, "throughput"),
                   (FLOOR, PEER, "gateway_cpu_ms"), (PER_REQUEST, DIRECT, "throughput"),
                   (PER_REQUEST, DIRECT, "p50_ms")]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _function(frame: str) -> str:
    """py-spy's "name (path:line)" as "name (short path)": one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.11/", f"{REPO_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


# Leaf frames of a thread that waits: the event loop in epoll, gRPC's poller thread blocked in C,
# an idle executor thread.
IDLE_LEAVES = ("selectors.py", "threading.py", "concurrent/futures/thread.py")
# The frames (nearly) every sample passes through: left out of the total-time ranking, where
# they would fill the top with 100 %.
ENTRY_FUNCTIONS = frozenset({
    "_run_module_as_main (<frozen runpy>)", "_run_code (<frozen runpy>)",
    "<module> (server/__main__.py)", "main (server/__main__.py)", "run (asyncio/runners.py)",
    "Runner.run (asyncio/runners.py)", "BaseEventLoop.run_until_complete (asyncio/base_events.py)",
    "BaseEventLoop.run_forever (asyncio/base_events.py)",
    "BaseEventLoop._run_once (asyncio/base_events.py)",
    "Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
    "Thread.run (threading.py)",
})


def rank_functions(text: str, top: int = RANKED_FUNCTIONS) -> Json:
    """Own (leaf) and total (inclusive) shares of the non-idle samples per function, from py-spy's
    raw collapsed stacks; the `top` largest of each (ENTRY_FUNCTIONS left out of the total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = active = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame.strip()]
        samples += count
        if any(marker in frames[-1] for marker in IDLE_LEAVES):
            continue
        active += count
        names = [_function(frame) for frame in frames]
        own[names[-1]] += count
        for name in set(names) - ENTRY_FUNCTIONS:
            total[name] += count
    share = (lambda n: n / active) if active else (lambda n: 0.0)
    return {"samples": samples, "active_samples": active,
            "own": {name: share(n) for name, n in own.most_common(top)},
            "total": {name: share(n) for name, n in total.most_common(top)}}


def _native_file(frame: str) -> str | None:
    """The shared object or C file of a native frame ("sendmsg (libc.so.6)" → "libc.so.6");
    None for a Python frame."""
    where = frame[frame.rfind("(") + 1:].rstrip(")") if "(" in frame else frame
    path = where.rsplit(":", 1)[0] if where.rsplit(":", 1)[-1].isdigit() else where
    name = path.rsplit("/", 1)[-1]
    if name.endswith((".so", ".c", ".h")) or ".so." in name:
        return name.replace(".cpython-311-x86_64-linux-gnu", "")
    return None


def rank_native(text: str, top: int = 15) -> Json:
    """Own time of the event-loop thread's busy samples from a `py-spy --native` run, by where
    the leaf runs: a C extension or library, libc with the library that called it (system calls
    show there), or the interpreter running Python code."""
    places: Counter[str] = Counter()
    busy = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if frame.strip()]
        if not any("_run_module_as_main" in frame for frame in frames) or \
                any("selectors.py" in frame for frame in frames):
            continue  # another thread, or the loop waiting in epoll
        count = int(count_text)
        busy += count
        leaf = _native_file(frames[-1])
        if leaf is None:
            places["Python code (the interpreter)"] += count
        elif leaf.startswith("libc.so"):
            caller = next((_native_file(frame) or "Python code" for frame in reversed(frames)
                           if not (_native_file(frame) or "").startswith("libc.so")), "?")
            symbol = frames[-1].split(" (", 1)[0]
            symbol = "(unresolved)" if symbol.startswith("0x") else symbol
            places[f"libc {symbol}, called from {caller}"] += count
        else:
            places[leaf] += count
    share = (lambda n: n / busy) if busy else (lambda n: 0.0)
    return {"busy_samples": busy,
            "own_by_place": {name: share(n) for name, n in places.most_common(top)}}


def trivial(env: Env, budget: Budget, quick: bool) -> Json:
    """The whole phase; every process it starts is stopped before it returns."""
    plan = QUICK_PLAN if quick else FULL_PLAN
    url = env.triton.grpc_url
    servers: dict[str, ServerProcess] = {}
    peer: PeerProcess | None = None
    floor: FloorProcess | None = None
    # Each server its own embedded store: one store directory admits one process.
    stores = Path(tempfile.mkdtemp(prefix="bench-trivial-stores-", dir=env.var_dir))
    try:
        for arm in SERVER_ARMS:
            slug = _slug(arm.name)
            servers[arm.name] = ServerProcess(
                url, env.var_dir / f"bench-trivial-{slug}.log",
                [*SERVER_BASE_ARGS, "--store.path", str(stores / slug), *arm.args])
        peer = PeerProcess(url, env.var_dir / "bench-peer-fastapi.log", (TRIVIAL_MODEL, ENSEMBLE))
        floor = FloorProcess(url, env.var_dir / "bench-floor-grpc.log", TRIVIAL_MODEL)
        for server in servers.values():
            server.wait_serving()
        peer.wait_serving()
        floor.wait_serving()
        env.log(f"  {len(servers)} vision-grpc variant(s) pid "
                + ", ".join(str(s.pid) for s in servers.values())
                + f"; FastAPI peer pid {peer.pid} at {peer.address}; floor pid {floor.pid}")
        section = _trivial_rounds(env, plan, servers, peer, floor)
        section["detection"] = _detection_pair(env, plan, peer)
        profiled = [arm for arm in SERVER_ARMS if arm.profiled]
        section["profiles"] = {arm.name: _profile(env, budget, plan, arm, servers[arm.name])
                               for arm in profiled}
        section["native_profiles"] = {
            arm.name: _profile(env, budget, plan, arm, servers[arm.name], native=True)
            for arm in profiled}
        return section
    finally:
        if peer is not None:
            peer.stop()
        if floor is not None:
            floor.stop()
        for server in servers.values():
            server.stop()
        shutil.rmtree(stores, ignore_errors=True)


def _meter(env: Env, gateway_pid: int | None) -> Meter:
    """Generator, Triton with its stubs, and the arm's gateway with any children it spawns."""
    groups = {"generator": ProcessGroup(env.generator.pids),
              "triton": ProcessGroup([env.triton.pid], with_children=True)}
    if gateway_pid is not None:
        groups["gateway"] = ProcessGroup([gateway_pid], with_children=True)
    return Meter(env.generator, groups)


def _specs(kind: Kind, address: str, duration_s: float, model: str | None = None
           ) -> Callable[[int], RunSpec]:
    """The arm's run at a given concurrency."""
    return lambda concurrency: RunSpec(kind, address, IMAGES, concurrency, duration_s=duration_s,
                                       model=model)


def _trivial_rounds(env: Env, plan: Plan, servers: dict[str, ServerProcess],
                    peer: PeerProcess, floor: FloorProcess) -> Json:
    url = env.triton.grpc_url
    specs: dict[str, Callable[[int], RunSpec]] = {}
    meters: dict[str, Meter] = {}
    for name, server in servers.items():
        specs[name] = _specs("detect", server.address, plan.run_s)
        meters[name] = _meter(env, server.pid)
    specs[DIRECT] = _specs("triton", url, plan.run_s, TRIVIAL_MODEL)
    specs[PER_REQUEST] = _specs("triton_per_request", url, plan.run_s, TRIVIAL_MODEL)
    specs[PEER] = _specs("http_detect", peer.address, plan.run_s)
    specs[FLOOR] = _specs("detect", floor.address, plan.run_s)
    meters[DIRECT] = meters[PER_REQUEST] = _meter(env, None)
    meters[PEER] = _meter(env, peer.pid)
    meters[FLOOR] = _meter(env, floor.pid)
    arms = tuple(specs)
    for arm in arms:  # connections, lazy imports, the stub's first batches
        env.generator.run(replace(specs[arm](16), duration_s=max(0.5, plan.run_s / 2)))

    ratio_plan = _ratio_plan(tuple(servers))
    gateways = (*servers, PEER, FLOOR)
    section: Json = {
        "model": TRIVIAL_MODEL, "images": IMAGES, "reps": plan.reps, "run_s": plan.run_s,
        "server_base_args": list(SERVER_BASE_ARGS),
        "server_arms": {arm.name: list(arm.args) for arm in SERVER_ARMS},
        "direct": DIRECT, "per_request": PER_REQUEST, "peer": PEER, "floor": FLOOR,
        "arms": {arm: {} for arm in arms},
        "ratios": [{"numerator": a, "denominator": b, "figure": figure, "by_concurrency": {}}
                   for a, b, figure in ratio_plan],
        "added_p50_ms": {arm: {} for arm in gateways},
    }
    for concurrency in plan.concurrencies:
        runs: dict[str, list[Measured]] = defaultdict(list)
        for round_index in range(plan.reps):
            for arm in rotated(arms, round_index):
                runs[arm].append(meters[arm].run(specs[arm](concurrency), triton_url=url)[1])
        key = str(concurrency)
        for arm in arms:
            section["arms"][arm][key] = summarize(runs[arm])
        for entry, (a, b, figure) in zip(section["ratios"], ratio_plan, strict=True):
            entry["by_concurrency"][key] = _ratio(runs[a], runs[b], figure)
        for arm in gateways:
            section["added_p50_ms"][arm][key] = _difference(runs[arm], runs[DIRECT], "p50_ms")
        env.log(f"  x{concurrency}: " + ", ".join(
            f"{arm} {spread([m.throughput for m in runs[arm]]).text(0)}" for arm in arms)
            + " calls/s")
    return section


def _detection_pair(env: Env, plan: Plan, peer: PeerProcess) -> Json:
    """vision-grpc (the bench's main server, yolox_nano by default) vs the peer naming
    yolox_nano, interleaved, at one concurrency."""
    url = env.triton.grpc_url
    c = plan.detection_concurrency
    specs = {"vision-grpc": RunSpec("detect", env.server.address, IMAGES, c,
                                    duration_s=plan.detection_run_s),
             PEER: RunSpec("http_detect", peer.address, IMAGES, c,
                           duration_s=plan.detection_run_s, model=ENSEMBLE)}
    meters = {"vision-grpc": _meter(env, env.server.pid), PEER: _meter(env, peer.pid)}
    arms = tuple(specs)
    for arm in arms:  # also the onnxruntime sessions' first runs, when no phase before warmed them
        env.generator.run(specs[arm])
    runs: dict[str, list[Measured]] = defaultdict(list)
    for round_index in range(plan.reps):
        for arm in rotated(arms, round_index):
            runs[arm].append(meters[arm].run(specs[arm], triton_url=url)[1])
    env.log("  yolox_nano: " + ", ".join(
        f"{arm} {spread([m.throughput for m in runs[arm]]).text(1)}" for arm in arms) + " img/s")
    return {"model": ENSEMBLE, "concurrency": c, "run_s": plan.detection_run_s,
            "arms": {arm: summarize(runs[arm]) for arm in arms},
            "throughput_ratio": _ratio(runs["vision-grpc"], runs[PEER], "throughput"),
            "gateway_cpu_ratio": _ratio(runs["vision-grpc"], runs[PEER], "gateway_cpu_ms")}


def _profile(env: Env, budget: Budget, plan: Plan, arm: ServerArm, server: ServerProcess,
             native: bool = False) -> Json:
    name = f"trivial-{_slug(arm.name)}" + ("-native" if native else "")
    section = profile(replace(env, server=server), budget, name, RunSpec(
        "detect", server.address, IMAGES, plan.profile_concurrency,
        # py-spy takes a few seconds to read native symbols before it samples
        duration_s=budget.profile_s + (3.0 if native else 1.0)),
        NATIVE_RATE_HZ if native else None)
    if "error" not in section:
        text = (env.report_dir / section["file"]).read_text()
        section["ranking"] = rank_native(text) if native else rank_functions(text)
    return section
