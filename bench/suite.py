"""The benchmarks, phase by phase; each returns its JSON-ready section. Every comparison runs its
arms interleaved round by round (A, B, A, B, …, the starting arm rotating), and every figure is
the median of the rounds with its min–max."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.load import LoadGenerator, RunSpec
from bench.measure import Measured, Meter
from bench.payloads import large_png, photos, small_jpeg
from bench.procs import (
    BatchingVariant,
    ProcessGroup,
    ServerProcess,
    launch_triton,
    variant_repository,
)
from bench.stats import Spread, paired_ratio, spread
from tools.local_triton import REPO_ROOT, LocalTriton

Json = dict[str, Any]

CURRENT = BatchingVariant("delay2000_pref8", 2000, (8,))  # model_repository as committed
VARIANTS = (
    CURRENT,
    BatchingVariant("delay0_pref8", 0, (8,)),
    BatchingVariant("delay8000_pref8", 8000, (8,)),
    BatchingVariant("delay2000_nopref", 2000, ()),
    BatchingVariant("delay8000_nopref", 8000, ()),
)
INPROC_CONFIGS = ((1, 1), (2, 1), (1, 2), (2, 2))  # (intra_op threads, worker processes)


@dataclass(frozen=True)
class Budget:
    """How long and how often each phase measures (full run or --quick)."""

    reps: int
    run_s: float
    concurrencies: tuple[int, ...]
    ceiling_s: float
    ceiling_concurrencies: tuple[int, ...]
    inproc_s: float
    stream_small: int
    stream_large: int
    stream_in_flight: int  # the server's max_stream_in_flight: unary runs match it
    batching_s: float
    batching_concurrencies: tuple[int, ...]
    variants: tuple[BatchingVariant, ...]
    profile_s: float
    cost_chunks: int
    cost_chunk: int
    cost_concurrency: int


FULL = Budget(reps=3, run_s=4.0, concurrencies=(1, 4, 16, 64), ceiling_s=2.0,
              ceiling_concurrencies=(1, 16, 64), inproc_s=4.0, stream_small=150,
              stream_large=12, stream_in_flight=8, batching_s=3.0,
              batching_concurrencies=(1, 16, 64), variants=VARIANTS, profile_s=10.0,
              cost_chunks=10, cost_chunk=1000, cost_concurrency=16)
QUICK = Budget(reps=3, run_s=1.0, concurrencies=(1, 16), ceiling_s=0.5,
               ceiling_concurrencies=(1, 16), inproc_s=1.0, stream_small=30, stream_large=3,
               stream_in_flight=8, batching_s=1.0, batching_concurrencies=(16,),
               variants=VARIANTS[:2], profile_s=3.0, cost_chunks=3, cost_chunk=100,
               cost_concurrency=16)


@dataclass
class Env:
    generator: LoadGenerator
    server: ServerProcess
    triton: LocalTriton
    var_dir: Path
    report_dir: Path
    log: Callable[[str], None]

    def meter(self, triton: LocalTriton | None = None, server: bool = True) -> Meter:
        groups = {"generator": ProcessGroup(self.generator.pids),
                  "triton": ProcessGroup([(triton or self.triton).pid], with_children=True)}
        if server:
            groups["server"] = ProcessGroup([self.server.pid])
        return Meter(self.generator, groups)


def rotated(items: tuple[str, ...], round_index: int) -> tuple[str, ...]:
    shift = round_index % len(items)
    return items[shift:] + items[:shift]


def summarize(runs: list[Measured]) -> Json:
    """Median and min–max of each figure over the rounds, plus the raw rounds."""
    groups = sorted({name for m in runs for name in m.cpu_ms})
    models = sorted({name for m in runs for name in m.batches})
    return {
        "throughput": asdict(spread([m.throughput for m in runs])),
        "p50_ms": asdict(spread([m.p50_ms for m in runs])),
        "p95_ms": asdict(spread([m.p95_ms for m in runs])),
        "p99_ms": asdict(spread([m.p99_ms for m in runs])),
        "cpu_ms": {g: asdict(spread([m.cpu_ms.get(g, float("nan")) for m in runs]))
                   for g in groups},
        "cores_busy": asdict(spread([m.cores_busy for m in runs])),
        "batches": {b: asdict(spread([m.batches.get(b, float("nan")) for m in runs]))
                    for b in models},
        "completed": sum(m.completed for m in runs),
        "errors": sum(m.errors for m in runs),
        "first_error": next((m.first_error for m in runs if m.first_error), ""),
        "rounds": [asdict(m) for m in runs],
    }


def ratio(a: list[Measured], b: list[Measured], figure: str = "throughput") -> Json:
    values: Spread = paired_ratio([getattr(m, figure) for m in a],
                                  [getattr(m, figure) for m in b])
    return asdict(values)


def describe_images() -> Json:
    sizes = [len(image) for image in photos()]
    return {"photos": {"count": len(sizes), "min_bytes": min(sizes), "max_bytes": max(sizes)},
            "small_bytes": len(small_jpeg()), "large_bytes": len(large_png()),
            "small": "astronaut.png (512x512) re-encoded as JPEG quality 80",
            "large": "astronaut.png upscaled to 2400x2400 + fixed-seed noise, PNG compression 1"}


def warm_up(env: Env, budget: Budget) -> None:
    """Connections, lazy imports, onnxruntime sessions in both workers, Triton's first batches."""
    short = max(0.5, budget.run_s / 2)
    address, url = env.server.address, env.triton.grpc_url
    for spec in (RunSpec("health", address, "photos", 4, duration_s=short),
                 RunSpec("detect", address, "photos", 16, duration_s=short),
                 RunSpec("triton", url, "photos", 16, duration_s=short),
                 RunSpec("triton_per_request", url, "photos", 4, duration_s=short),
                 RunSpec("stream", address, "small", 1, count=1, per_stream=8),
                 RunSpec("inproc", "", "photos", 2, duration_s=short, intra_op=1),
                 RunSpec("inproc", "", "photos", 2, duration_s=short, intra_op=2)):
        env.generator.run(spec)


def generator_ceiling(env: Env, budget: Budget) -> Json:
    """grpc.health.v1 Check on the server: what the generator pushes when the RPC costs nothing."""
    meter = env.meter()
    runs: dict[int, list[Measured]] = defaultdict(list)
    for _ in range(budget.reps):
        for concurrency in budget.ceiling_concurrencies:
            runs[concurrency].append(meter.run(RunSpec(
                "health", env.server.address, "photos", concurrency,
                duration_s=budget.ceiling_s))[1])
    env.log("  " + ", ".join(f"x{c}: {spread([m.throughput for m in r]).text(0)} calls/s"
                             for c, r in runs.items()))
    return {"concurrencies": {str(c): summarize(r) for c, r in runs.items()},
            "workers": env.generator.size}


GATEWAY_ARMS = ("service", "direct", "per_request")


def gateway(env: Env, budget: Budget) -> Json:
    """Benchmarks 1 and 3: service vs direct Triton (shared client) vs a client per request."""
    meter = env.meter()
    url = env.triton.grpc_url
    specs = {"service": lambda c: RunSpec("detect", env.server.address, "photos", c,
                                          duration_s=budget.run_s),
             "direct": lambda c: RunSpec("triton", url, "photos", c, duration_s=budget.run_s),
             "per_request": lambda c: RunSpec("triton_per_request", url, "photos", c,
                                              duration_s=budget.run_s)}
    section: Json = {"arms": {arm: {} for arm in GATEWAY_ARMS},
                     "service_over_direct": {}, "per_request_over_shared": {},
                     "service_over_direct_p50": {}, "per_request_over_shared_p50": {}}
    for concurrency in budget.concurrencies:
        runs: dict[str, list[Measured]] = defaultdict(list)
        for round_index in range(budget.reps):
            for arm in rotated(GATEWAY_ARMS, round_index):
                runs[arm].append(meter.run(specs[arm](concurrency), triton_url=url)[1])
        key = str(concurrency)
        for arm in GATEWAY_ARMS:
            section["arms"][arm][key] = summarize(runs[arm])
        section["service_over_direct"][key] = ratio(runs["service"], runs["direct"])
        section["per_request_over_shared"][key] = ratio(runs["per_request"], runs["direct"])
        section["service_over_direct_p50"][key] = ratio(runs["service"], runs["direct"], "p50_ms")
        section["per_request_over_shared_p50"][key] = ratio(runs["per_request"], runs["direct"],
                                                            "p50_ms")
        env.log(f"  x{concurrency}: " + ", ".join(
            f"{arm} {spread([m.throughput for m in runs[arm]]).text(1)} img/s"
            for arm in GATEWAY_ARMS))
    return section


def best_concurrency(gateway_section: Json) -> int:
    service = gateway_section["arms"]["service"]
    return int(max(service, key=lambda c: service[c]["throughput"]["median"]))


def in_process(env: Env, budget: Budget, service_concurrency: int) -> Json:
    """Benchmark 2: the ensemble's own code with onnxruntime in-process, per thread setting and
    worker count, rounds interleaved with the service at its best concurrency."""
    meter = env.meter()
    names = tuple(f"intra{intra}_workers{workers}" for intra, workers in INPROC_CONFIGS)
    arms = (*names, "service")
    runs: dict[str, list[Measured]] = defaultdict(list)
    for round_index in range(budget.reps):
        for arm in rotated(arms, round_index):
            if arm == "service":
                spec = RunSpec("detect", env.server.address, "photos", service_concurrency,
                               duration_s=budget.inproc_s)
            else:
                intra, workers = INPROC_CONFIGS[names.index(arm)]
                spec = RunSpec("inproc", "", "photos", workers, duration_s=budget.inproc_s,
                               workers=workers, intra_op=intra)
            runs[arm].append(meter.run(spec)[1])
    best = max(names, key=lambda n: spread([m.throughput for m in runs[n]]).median)
    env.log("  " + ", ".join(f"{arm} {spread([m.throughput for m in runs[arm]]).text(1)}"
                             for arm in arms) + f" img/s; best {best}")
    return {"configs": {arm: summarize(runs[arm]) for arm in arms}, "best": best,
            "service_concurrency": service_concurrency,
            "service_over_inprocess": ratio(runs["service"], runs[best])}


def streaming(env: Env, budget: Budget) -> Json:
    """Benchmark 5: one StreamDetectObjects upload vs unary calls (small images), and vs direct
    Triton for large ones, which unary cannot carry; unary and direct keep as many calls in flight
    as the server runs per stream."""
    meter = env.meter()
    address, url, window = env.server.address, env.triton.grpc_url, budget.stream_in_flight
    cases = {
        "small": {"stream": RunSpec("stream", address, "small", 1, count=1, workers=1,
                                    per_stream=budget.stream_small),
                  "unary": RunSpec("detect", address, "small", window, workers=1,
                                   count=budget.stream_small)},
        "large": {"stream": RunSpec("stream", address, "large", 1, count=1, workers=1,
                                    per_stream=budget.stream_large),
                  "direct": RunSpec("triton", url, "large", window, workers=1,
                                    count=budget.stream_large)},
    }
    section: Json = {"in_flight": window}
    for case, specs in cases.items():
        runs: dict[str, list[Measured]] = defaultdict(list)
        arms = tuple(specs)
        for round_index in range(budget.reps):
            for arm in rotated(arms, round_index):
                runs[arm].append(meter.run(specs[arm], triton_url=url)[1])
        other = arms[1]
        section[case] = {"arms": {arm: summarize(runs[arm]) for arm in arms},
                         "images_per_run": specs["stream"].per_stream,
                         "versus": other, "stream_over_other": ratio(runs["stream"], runs[other])}
        env.log(f"  {case}: " + ", ".join(
            f"{arm} {spread([m.throughput for m in runs[arm]]).text(1)} img/s" for arm in arms))
    return section


PROFILE_BUCKETS = (  # (leaf frame fragment, bucket), first match wins
    ("selectors.py", "idle: event loop waiting in epoll"),
    ("threading.py", "idle: gRPC poller thread waiting in C"),
    ("concurrent/futures/thread.py", "idle: executor thread waiting for work"),
    ("google/protobuf", "protobuf (parse/serialise)"),
    ("_upb", "protobuf (parse/serialise)"),
    ("tritonclient/", "tritonclient (request build, result parse)"),
    ("grpc/", "grpc aio (Cython call machinery)"),
    ("asyncio/", "asyncio event loop"),
    ("logging/", "logging"),
    ("prometheus_client/", "prometheus_client (metrics)"),
    ("server/images.py", "header inspection (server/images.py)"),
    ("server/", "server code (servicer, pipeline, converters)"),
    ("vision/", "generated protobuf classes"),
    ("numpy/", "numpy"),
)


def _frame_file(frame: str) -> str:
    # py-spy's raw frames read "function (path/file.py:line)"
    return frame[frame.rfind("(") + 1:].rsplit(":", 1)[0] if "(" in frame else frame


def _bucket(frame: str) -> str:
    path = _frame_file(frame)
    return next((name for fragment, name in PROFILE_BUCKETS if fragment in path),
                "other (Python stdlib, interpreter)")


def _short_frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rstrip(")")
    for marker in ("site-packages/", "python3.11/", f"{REPO_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def parse_collapsed(text: str) -> Json:
    """Self-time shares by bucket and by function, and inclusive shares of the service's own
    and tritonclient's functions, from py-spy's raw (collapsed-stack) output."""
    by_bucket: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame.strip()]
        total += count
        leaf = frames[-1]
        bucket = _bucket(leaf)
        by_bucket[bucket] += count
        if bucket.startswith("idle"):
            continue
        by_leaf[_short_frame(leaf)] += count
        for frame in set(frames):
            path = _frame_file(frame)
            if "server/__main__" not in path and any(
                    part in path for part in ("server/", "tritonclient/")):
                inclusive[_short_frame(frame)] += count
    idle = sum(n for name, n in by_bucket.items() if name.startswith("idle"))
    active = total - idle
    share = (lambda n: n / active) if active else (lambda n: 0.0)
    return {"samples": total, "idle_samples": idle,
            "self_by_bucket": {name: share(n) for name, n in by_bucket.most_common()
                               if not name.startswith("idle")},
            "self_by_function": {name: share(n) for name, n in by_leaf.most_common(15)},
            "inclusive_service_functions": {name: share(n)
                                            for name, n in inclusive.most_common(15)}}


PROFILE_RATE_HZ = 250


def profile(env: Env, budget: Budget, name: str, spec: RunSpec,
            native_rate_hz: int | None = None) -> Json:
    """py-spy samples the server process's Python threads (250 Hz) while spec runs; also the
    server's CPU per thread (event loop = main, gRPC core's named threads). With native_rate_hz
    it samples native frames too (C extensions, libc), at that lower rate."""
    py_spy = Path(sys.executable).parent / "py-spy"
    output = env.report_dir / f"profile-{name}.txt"
    if not py_spy.is_file():
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    server = ProcessGroup([env.server.pid])
    threads_before = server.thread_cpu()
    cpu_before = server.usage().cpu_s
    sampler = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(env.server.pid), "--duration",
         str(int(budget.profile_s)), "--rate", str(native_rate_hz or PROFILE_RATE_HZ),
         "--format", "raw", "--output", str(output), *(["--native"] if native_rate_hz else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # attach before the load starts
        run = env.generator.run(spec)
        _, errors = sampler.communicate(timeout=budget.profile_s + 30)
    finally:
        if sampler.poll() is None:
            sampler.kill()
            sampler.wait()
    cpu = server.usage().cpu_s - cpu_before
    threads_after = server.thread_cpu()
    per_image = (lambda seconds: 1000.0 * seconds / run.completed) if run.completed else \
        (lambda seconds: 0.0)
    threads = {name: per_image(spent - threads_before.get(name, 0.0))
               for name, spent in threads_after.items()}
    if sampler.returncode != 0 or not output.is_file():
        return {"error": f"py-spy failed ({sampler.returncode}): {errors.decode()[-400:]}"}
    section = parse_collapsed(output.read_text())
    section.update({
        "file": output.name, "spec": {"kind": spec.kind, "images": spec.images,
                                      "concurrency": spec.concurrency},
        "throughput": run.throughput, "completed": run.completed,
        "server_cpu_ms_per_image": per_image(cpu),
        "thread_cpu_ms_per_image": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "rate_hz": native_rate_hz or PROFILE_RATE_HZ,
    })
    env.log(f"  {name}: {run.throughput:.1f} img/s, server "
            f"{section['server_cpu_ms_per_image']:.2f} CPU ms/image, top "
            + ", ".join(f"{b} {s:.0%}" for b, s in list(section["self_by_bucket"].items())[:3]))
    return section


def batching(env: Env, budget: Budget, scratch: Path) -> Json:
    """Benchmark 4: Triton's executed batch sizes and throughput/latency per batching variant,
    each variant its own Triton (started together, measured interleaved), direct shared client.
    The current variant is the main Triton on model_repository as committed."""
    tritons: dict[str, LocalTriton] = {CURRENT.name: env.triton}
    try:
        for variant in budget.variants:
            if variant.name not in tritons:
                repository = variant_repository(variant, scratch)
                tritons[variant.name] = launch_triton(
                    env.var_dir / f"bench-triton-{variant.name}.log", repository, wait=False)
        for triton in tritons.values():
            triton.wait_ready()
        meters = {name: env.meter(triton, server=False) for name, triton in tritons.items()}
        names = tuple(tritons)
        for triton in tritons.values():  # warm each variant's stubs and sessions
            env.generator.run(RunSpec("triton", triton.grpc_url, "photos", 16,
                                      duration_s=max(0.5, budget.batching_s / 2)))
        section: Json = {"variants": {v.name: {"max_queue_delay_us": v.max_queue_delay_us,
                                               "preferred_batch_sizes": list(
                                                   v.preferred_batch_sizes),
                                               "concurrencies": {}}
                                      for v in budget.variants},
                         "throughput_over_current": {}, "p50_over_current": {}}
        for concurrency in budget.batching_concurrencies:
            runs: dict[str, list[Measured]] = defaultdict(list)
            for round_index in range(budget.reps):
                for name in rotated(names, round_index):
                    url = tritons[name].grpc_url
                    runs[name].append(meters[name].run(
                        RunSpec("triton", url, "photos", concurrency,
                                duration_s=budget.batching_s), triton_url=url)[1])
            key = str(concurrency)
            for name in names:
                section["variants"][name]["concurrencies"][key] = summarize(runs[name])
                section["throughput_over_current"].setdefault(name, {})[key] = ratio(
                    runs[name], runs[CURRENT.name])
                section["p50_over_current"].setdefault(name, {})[key] = ratio(
                    runs[name], runs[CURRENT.name], "p50_ms")
            env.log(f"  x{concurrency}: " + ", ".join(
                f"{name} {spread([m.throughput for m in runs[name]]).text(1)}" for name in names))
        section["recommendation"] = recommend(section, budget)
        return section
    finally:
        for name, triton in tritons.items():
            if name != CURRENT.name:
                triton.stop()


RECOMMENDATION_RULE = (
    "a variant replaces the current defaults only if its throughput beats theirs in every round "
    "at the highest concurrency measured (the paired ratio's minimum is above 1) and its p50 "
    "latency at the lowest concurrency is not more than 5 % worse (median ratio); otherwise the "
    "data supports keeping the current defaults")


def recommend(section: Json, budget: Budget) -> Json:
    """Applies RECOMMENDATION_RULE to the batching section."""
    top = str(max(budget.batching_concurrencies))
    low = str(min(budget.batching_concurrencies))
    candidates = []
    for name, by_concurrency in section["throughput_over_current"].items():
        if name == CURRENT.name:
            continue
        gain = by_concurrency[top]
        latency = section["p50_over_current"][name][low]
        if gain["low"] > 1.0 and latency["median"] <= 1.05:
            candidates.append((gain["median"], name))
    if not candidates:
        return {"variant": CURRENT.name, "change": False, "rule": RECOMMENDATION_RULE}
    _, name = max(candidates)
    return {"variant": name, "change": True, "rule": RECOMMENDATION_RULE}


def server_cost(env: Env, budget: Budget) -> Json:
    """Benchmark 6: a fresh server process; CPU (user+sys) and RSS after each chunk of small
    unary requests: CPU per 1 000 requests, and RSS after the first chunk vs after the last."""
    server = ServerProcess(env.triton.grpc_url, env.var_dir / "bench-server-cost.log")
    try:
        server.wait_serving()
        group = ProcessGroup([server.pid])
        start = group.usage()
        chunks = []
        previous = start
        for _ in range(budget.cost_chunks):
            run = env.generator.run(RunSpec("detect", server.address, "small",
                                            budget.cost_concurrency, count=budget.cost_chunk))
            now = group.usage()
            chunks.append({"requests": run.completed, "errors": run.errors,
                           "throughput": run.throughput,
                           "cpu_s_per_1000": 1000.0 * (now.cpu_s - previous.cpu_s)
                           / run.completed,
                           "rss_mib": now.rss_bytes / (1 << 20)})
            previous = now
        steady = [chunk["cpu_s_per_1000"] for chunk in chunks[1:]] or \
            [chunks[0]["cpu_s_per_1000"]]
        section = {
            "image": "small", "concurrency": budget.cost_concurrency,
            "chunk_requests": budget.cost_chunk, "chunks": chunks,
            "rss_start_mib": start.rss_bytes / (1 << 20),
            "rss_after_first_mib": chunks[0]["rss_mib"],
            "rss_after_last_mib": chunks[-1]["rss_mib"],
            "requests_total": sum(chunk["requests"] for chunk in chunks),
            "cpu_s_per_1000_steady": asdict(spread(steady)),
            "cpu_s_per_1000_first": chunks[0]["cpu_s_per_1000"],
        }
        env.log(f"  CPU {spread(steady).text(2)} s per 1000 requests; RSS "
                f"{section['rss_after_first_mib']:.1f} MiB after {budget.cost_chunk}, "
                f"{section['rss_after_last_mib']:.1f} MiB after {section['requests_total']}")
        return section
    finally:
        server.stop()
