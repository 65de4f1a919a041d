"""bench/REPORT.md and the console table, both rendered from results.json alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import cpu_path
from bench.gpu_report import GPU_SECTION
from bench.procs import STEPS

Json = dict[str, Any]



def fig(value: Json | None, digits: int = 1, unit: str = "") -> str:
    """A serialised Spread as "median (min–max)"."""
    if not value or not value.get("n") or math.isnan(value["median"]):
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(value['median'])}{unit} ({f.format(value['low'])}–{f.format(value['high'])})"


def med(value: Json | None, digits: int = 1) -> str:
    if not value or not value.get("n") or math.isnan(value["median"]):
        return "n/a"
    return f"{value['median']:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _batches(summary: Json) -> str:
    return " / ".join(med(summary["batches"].get(step), 2) for step in STEPS)


def machine_section(results: Json) -> list[str]:
    m = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    return [
        "## Machine and command", "",
        f"- Command: `{results['command']}` (run from the repository root); total wall time "
        f"{results['wall_s']:.0f} s" + (" — a `--quick` smoke run, not the full budget"
                                         if results["quick"] else "") + ".",
        f"- Started {results['started_utc']}; phases (s): "
        + ", ".join(f"{k} {v}" for k, v in results["phase_s"].items()) + ".",
        f"- {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB memory, Linux "
        f"{m['kernel']}; load average at start {m['load_average']}, at end "
        f"{[round(v, 2) for v in m.get('load_average_end', [])]}.",
        f"- Python {m['python']}, Triton {m['triton']} (the `nvidia-pytriton` 0.7.0 wheel, "
        f"CPU, every step a Python-backend model), {packages}.",
        "- Everything shares the same 2 cores: Triton and its three Python-backend stubs, the "
        "vision-grpc server process, the load generator's processes. The machine is shared and "
        "noisy, which is why every figure is a median of interleaved rounds with its min–max.",
        "",
    ]


def method_section(results: Json) -> list[str]:
    b = results["budget"]
    images = results["images"]
    photos = images["photos"]
    return [
        "## Method", "",
        "- Triton starts from `tools.local_triton.start_triton` on free ports; the server runs "
        "as a separate process (`python -m server --port P --triton.url 127.0.0.1:Q "
        "--admission.max-in-flight 256 --admission.peer-share 1.0`: admission opened above the "
        "highest concurrency, so that the phases compare serving, not load shedding, which "
        "`bench/overload.py` measures under the defaults), ready when grpc.health says SERVING; "
        "both are stopped by pid at the end (also on failure or Ctrl-C). Everything binds to "
        "127.0.0.1.",
        f"- Load: {results['ceiling']['workers']} spawned generator processes, each one asyncio "
        "loop with ONE reused channel (or one shared tritonclient) and N closed-loop calls in "
        "flight; the concurrency is split across the processes; all start at the same instant. "
        f"Runs last {b['run_s']} s (calls finishing after the window are not counted).",
        f"- Every figure: the median of {b['reps']} rounds and its min–max in brackets. Ratios "
        "are computed per round from arms run interleaved in that round (A, B, C, then B, C, A, "
        "…), then summarised the same way.",
        f"- Images: the {photos['count']} shared test photos "
        f"({photos['min_bytes'] // 1000}–{photos['max_bytes'] // 1000} KB, JPEG and PNG) cycled; "
        f"small = {images['small']} ({images['small_bytes'] // 1000} KB); large = "
        f"{images['large']} ({images['large_bytes'] / 1e6:.1f} MB).",
        "- Direct Triton calls send what the server sends: ensemble `yolox_nano`, IMAGE BYTES "
        "[1,1], SCORE_THRESHOLD 0.25 and IOU_THRESHOLD 0.45 FP32 [1,1], all five outputs read "
        "with `as_numpy`.",
        "- CPU figures are user+system seconds read from /proc (psutil) before and after each "
        "run, per completed image; Triton's include its Python-backend stub processes.",
        "",
    ]


def ceiling_section(results: Json) -> list[str]:
    section = results["ceiling"]
    rows = [[c, fig(s["throughput"], 0), fig(s["p50_ms"], 2), fig(s["p99_ms"], 2),
             fig(s["cpu_ms"].get("generator"), 3), fig(s["cpu_ms"].get("server"), 3)]
            for c, s in section["concurrencies"].items()]
    gateway = results["gateway"]["arms"]["service"]
    best = max(s["throughput"]["median"] for s in gateway.values())
    top = max(s["throughput"]["median"] for s in section["concurrencies"].values())
    return [
        "## Load generator ceiling", "",
        "grpc.health.v1 Check on the server (a trivial RPC), same generator and channels:", "",
        *table(["in flight", "calls/s", "p50 ms", "p99 ms", "generator CPU ms/call",
                "server CPU ms/call"], rows),
        f"The generator drives {top:.0f} trivial calls/s, {top / best:.0f}× the best detection "
        f"rate measured ({best:.1f} images/s), so it is not what limits detection. It does take "
        "CPU from the same 2 cores, though: its cost per detection call is in the table of "
        "section 1.", "",
    ]


def gateway_section(results: Json) -> list[str]:
    g = results["gateway"]
    arms = g["arms"]
    rows = []
    for c in arms["service"]:
        s, d = arms["service"][c], arms["direct"][c]
        rows.append([c, fig(s["throughput"]), fig(d["throughput"]),
                     fig(g["service_over_direct"][c], 3),
                     f"{med(s['p50_ms'], 0)} / {med(s['p95_ms'], 0)} / {med(s['p99_ms'], 0)}",
                     f"{med(d['p50_ms'], 0)} / {med(d['p95_ms'], 0)} / {med(d['p99_ms'], 0)}",
                     fig(g["service_over_direct_p50"][c], 2)])
    cpu_rows = []
    for c in arms["service"]:
        s, d = arms["service"][c], arms["direct"][c]
        cpu_rows.append([c, fig(s["cpu_ms"].get("server"), 2), fig(s["cpu_ms"].get("triton"), 1),
                         fig(d["cpu_ms"].get("triton"), 1), fig(s["cpu_ms"].get("generator"), 2),
                         fig(d["cpu_ms"].get("generator"), 2), med(s["cores_busy"], 2),
                         _batches(s)])
    return [
        "## 1. Gateway efficiency: service vs direct Triton", "",
        "Unary `DetectionService/DetectObjects` through the server vs the same images sent "
        "straight to Triton's `yolox_nano` ensemble with one shared `tritonclient.grpc.aio` "
        "client.", "",
        *table(["in flight", "service img/s", "direct img/s", "service ÷ direct (throughput)",
                "service p50/p95/p99 ms", "direct p50/p95/p99 ms", "service ÷ direct (p50)"],
               rows),
        "Where the CPU goes (CPU ms per image; cores busy = all measured processes' CPU "
        "seconds per wall second, out of 2):", "",
        *table(["in flight", "server", "Triton (service arm)", "Triton (direct arm)",
                "generator (service arm)", "generator (direct arm)", "cores busy (service arm)",
                "avg Triton batch (service arm)"], cpu_rows),
    ]


def per_request_section(results: Json) -> list[str]:
    g = results["gateway"]
    arms = g["arms"]
    rows = [[c, fig(arms["per_request"][c]["throughput"]), fig(arms["direct"][c]["throughput"]),
             fig(g["per_request_over_shared"][c], 3),
             fig(arms["per_request"][c]["p50_ms"], 0), fig(arms["direct"][c]["p50_ms"], 0),
             fig(g["per_request_over_shared_p50"][c], 2),
             str(arms["per_request"][c]["errors"])]
            for c in arms["per_request"]]
    return [
        "## 3. The seed's pattern: a new client per request vs one shared client", "",
        "Straight to Triton, same load, measured in the same rounds as section 1: a new "
        "`tritonclient.grpc.aio.InferenceServerClient` (channel + stub) created and closed for "
        "every call vs one shared client.", "",
        *table(["in flight", "per-request img/s", "shared img/s", "per-request ÷ shared",
                "per-request p50 ms", "shared p50 ms", "p50 ratio", "errors"], rows),
        "A likely reason the gap closes above 1 in flight (not measured separately here): "
        "gRPC core's global subchannel pool lets channels to the same target with the same "
        "arguments share a live TCP connection, so with several calls in flight a \"new\" "
        "client often rides an existing connection, while at 1 in flight every call pays a "
        "fresh TCP + HTTP/2 handshake. Either way, on this CPU-bound box Triton's compute "
        "(about 45 CPU ms per image) hides most of the per-call set-up cost.", "",
    ]


def in_process_section(results: Json) -> list[str]:
    section = results["in_process"]
    configs = section["configs"]
    rows = [[name.replace("_", ", ").replace("intra", "intra_op ").replace("workers", "workers "),
             fig(s["throughput"]), fig(s["p50_ms"], 1),
             fig(s["cpu_ms"].get("generator") if name != "service" else None, 1)]
            for name, s in configs.items() if name != "service"]
    service = configs["service"]
    return [
        "## 2. The limit: in-process onnxruntime", "",
        "The ensemble's own functions (`preprocess_batch`, `postprocess_image`, "
        "`pack_detections` from model_repository, imported with a stand-in "
        "`triton_python_backend_utils`) around the same `model.onnx`, one image at a time in the "
        "generator's processes, no RPC; rounds interleaved with the service at "
        f"{section['service_concurrency']} in flight (its best concurrency in section 1).", "",
        *table(["setting", "img/s", "latency p50 ms", "CPU ms/image"], rows),
        f"Best setting: **{section['best']}**. Service at {section['service_concurrency']} in "
        f"flight: {fig(service['throughput'])} img/s, p50 {fig(service['p50_ms'], 0)} ms, "
        f"server + Triton CPU {med(service['cpu_ms'].get('server'), 1)} + "
        f"{med(service['cpu_ms'].get('triton'), 1)} ms/image.", "",
        f"**service ÷ in-process (best) = {fig(section['service_over_inprocess'], 3)}**", "",
    ]


def streaming_section(results: Json) -> list[str]:
    s = results["streaming"]
    small, large = s["small"], s["large"]
    return [
        "## 5. Streaming vs unary", "",
        f"One `StreamDetectObjects` upload (header, 1 MiB chunks, end marker per image, as the "
        f"SDK's `detection_uploads` sends them; the server runs {s['in_flight']} images of a "
        f"stream at once) vs unary calls keeping {s['in_flight']} in flight on one channel.", "",
        *table(["images", "per run", "stream img/s", "other arm", "other img/s",
                "stream ÷ other"], [
            [f"small ({results['images']['small_bytes'] // 1000} KB JPEG)",
             str(small["images_per_run"]), fig(small["arms"]["stream"]["throughput"]),
             "unary DetectObjects", fig(small["arms"]["unary"]["throughput"]),
             fig(small["stream_over_other"], 3)],
            [f"large ({results['images']['large_bytes'] / 1e6:.1f} MB PNG)",
             str(large["images_per_run"]), fig(large["arms"]["stream"]["throughput"]),
             "direct Triton", fig(large["arms"]["direct"]["throughput"]),
             fig(large["stream_over_other"], 3)],
        ]),
        "Large images do not fit a unary call (4 MiB message limit), so the large case compares "
        "the stream through the service with the same images sent straight to Triton "
        f"({s['in_flight']} in flight, shared client) instead. Server CPU per image: small "
        f"stream {med(small['arms']['stream']['cpu_ms'].get('server'), 2)} ms vs unary "
        f"{med(small['arms']['unary']['cpu_ms'].get('server'), 2)} ms; large stream "
        f"{med(large['arms']['stream']['cpu_ms'].get('server'), 1)} ms.", "",
    ]


def batching_section(results: Json) -> list[str]:
    section = results["batching"]
    variants = section["variants"]
    gateway = results["gateway"]["arms"]["service"]
    default_rows = [[c, _batches(s)] for c, s in gateway.items()]
    rows = []
    for name, v in variants.items():
        for c, s in v["concurrencies"].items():
            rows.append([name, str(v["max_queue_delay_us"]),
                         str(v["preferred_batch_sizes"] or "none"), c, fig(s["throughput"]),
                         fig(section["throughput_over_current"][name][c], 3),
                         f"{med(s['p50_ms'], 0)} / {med(s['p99_ms'], 0)}",
                         _batches(s)])
    rec = section["recommendation"]
    chosen = variants[rec["variant"]]
    verdict = (f"The data supports **changing** the defaults to `{rec['variant']}` "
               f"(max_queue_delay_microseconds {chosen['max_queue_delay_us']}, "
               f"preferred_batch_size {chosen['preferred_batch_sizes'] or 'none'}) on every "
               "step." if rec["change"] else
               "The data supports **keeping** the current defaults "
               "(max_queue_delay_microseconds 2000, preferred_batch_size [8] on every step): no "
               "variant beat them reliably.")
    return [
        "## 4. Batching", "",
        "Average executed batch size per step (inference_count ÷ execution_count deltas from "
        "Triton's statistics) with the repository's defaults, during the service runs of "
        "section 1:", "",
        *table(["in flight", "avg Triton batch"], default_rows),
        "Variants: temporary copies of model_repository with every step's dynamic_batching "
        "block (config.pbtxt and configs/cpu.pbtxt) edited, each served by its own Triton, "
        "started together and measured in interleaved rounds with the direct shared client; "
        "ratios are against the current defaults (`delay2000_pref8`) in the same rounds.", "",
        *table(["variant", "delay µs", "preferred", "in flight", "img/s", "÷ current",
                "p50 / p99 ms", "avg Triton batch"], rows),
        f"Rule: {rec['rule']}.", "", verdict, "",
    ]


def cost_section(results: Json) -> list[str]:
    c = results["server_cost"]
    growth = c["rss_after_last_mib"] - c["rss_after_first_mib"]
    return [
        "## 6. Server cost", "",
        f"A fresh server process, {c['requests_total']} unary DetectObjects calls of the small "
        f"{results['images']['small_bytes'] // 1000} KB JPEG, {c['concurrency']} in flight, in "
        f"chunks of {c['chunk_requests']}; CPU (user+sys) and RSS of the server process read "
        "after each chunk.", "",
        f"- CPU per 1 000 requests: **{fig(c['cpu_s_per_1000_steady'], 2, ' s')}** over chunks "
        f"2–{len(c['chunks'])} (first chunk, with connection set-up and lazy imports: "
        f"{c['cpu_s_per_1000_first']:.2f} s).",
        f"- RSS: {c['rss_start_mib']:.1f} MiB when ready, {c['rss_after_first_mib']:.1f} MiB after "
        f"{c['chunk_requests']} requests, {c['rss_after_last_mib']:.1f} MiB after "
        f"{c['requests_total']} ({growth:+.1f} MiB).",
        "",
        *table(["chunk", "img/s", "CPU s / 1000", "RSS MiB"],
               [[str(i + 1), f"{ch['throughput']:.1f}", f"{ch['cpu_s_per_1000']:.2f}",
                 f"{ch['rss_mib']:.1f}"] for i, ch in enumerate(c["chunks"])]),
    ]


def profile_section(results: Json) -> list[str]:
    lines = ["## The biggest cost in the service path (profile)", "",
             "py-spy sampling the server process's Python threads (the event loop and gRPC's "
             "poller thread); time inside C extensions counts to the Python line that called "
             "them; samples of the loop idle in epoll and of the poller thread blocked in C "
             "are left out of the shares, so the shares are of the event-loop thread's work. "
             "CPU per thread comes from /proc (thread names as the kernel shows them; `main` is "
             "the event loop). The raw collapsed stacks are in bench/report/profile-*.txt "
             "(speedscope.app or flamegraph.pl open them).", ""]
    for name, p in results["profile"].items():
        if "error" in p:
            lines += [f"- {name}: not measured ({p['error']})", ""]
            continue
        threads = ", ".join(f"{thread} {ms:.2f}" for thread, ms in
                            p["thread_cpu_ms_per_image"].items() if ms >= 0.005)
        active = p["samples"] - p["idle_samples"]
        loop_ms = p["thread_cpu_ms_per_image"].get("main", 0.0)
        lines += [f"### {name}: {p['spec']['kind']} of {p['spec']['images']}, "
                  f"{p['spec']['concurrency']} in flight", "",
                  f"{p['throughput']:.1f} img/s; server CPU {p['server_cpu_ms_per_image']:.2f} ms "
                  f"per image; by thread (ms/image): {threads}. {active} active samples of "
                  f"{p['samples']} at {p['rate_hz']} Hz.", "",
                  *bucket_table(p, loop_ms, "active", "image", 2),
                  "Top functions (self):", "",
                  *table(["function", "share"], [[f"`{f}`", f"{s:.1%}"] for f, s in
                                                 list(p["self_by_function"].items())[:10]]),
                  "Service and tritonclient functions (inclusive):", "",
                  *table(["function", "share"], [[f"`{f}`", f"{s:.1%}"] for f, s in
                                                 list(p["inclusive_service_functions"].items())
                                                 [:10]])]
    return lines


RATIO_FIGURES = {"throughput": "throughput", "p50_ms": "p50 latency",
                 "gateway_cpu_ms": "gateway CPU per call"}


def _trivial_ratio(t: Json, numerator: str, denominator: str, figure: str) -> Json:
    return next(r for r in t["ratios"] if (r["numerator"], r["denominator"], r["figure"])
                == (numerator, denominator, figure))


def trivial_summary(results: Json) -> list[str]:
    t = results.get("trivial")
    if not t:
        return []
    lines = []
    for arm in t["server_arms"]:
        for other, label in ((t["peer"], "the FastAPI peer"), (t["direct"], "direct Triton")):
            by_c = _trivial_ratio(t, arm, other, "throughput")["by_concurrency"]
            lines.append(f"- trivial model, {arm} ÷ {label} (throughput): " + ", ".join(
                f"{c} in flight {fig(v, 2)}" for c, v in by_c.items()) + ".")
    if "floor" in t:
        for arm in t["server_arms"]:
            by_c = _trivial_ratio(t, arm, t["floor"], "gateway_cpu_ms")["by_concurrency"]
            lines.append(f"- trivial model, {arm} ÷ {t['floor']} (gateway CPU per call): "
                         + ", ".join(f"{c} in flight {fig(v, 2)}" for c, v in by_c.items())
                         + ".")
    low = min(t["added_p50_ms"][t["peer"]], key=int)
    lines.append(f"- trivial model, gateway-added p50 at {low} in flight: " + ", ".join(
        f"{arm} {fig(by_c[low], 2, ' ms')}" for arm, by_c in t["added_p50_ms"].items()) + ".")
    return lines


def bucket_table(p: Json, loop_ms: float, samples: str, per: str, digits: int) -> list[str]:
    """A profile's own time by where its leaf frame runs, with the event-loop thread's CPU it
    stands for (`samples`: which samples the shares are of; `per`: image or call)."""
    return table(["where (leaf frame)", f"share of {samples} samples",
                  f"≈ ms/{per} (share × event-loop thread CPU)"],
                 [[bucket, f"{share:.1%}", f"{share * loop_ms:.{digits}f}"]
                  for bucket, share in p["self_by_bucket"].items()])


def _profile_ranking(name: str, p: Json) -> list[str]:
    if "error" in p:
        return [f"- {name}: not profiled ({p['error']})", ""]
    threads = ", ".join(f"{thread} {ms:.3f}" for thread, ms in
                        p["thread_cpu_ms_per_image"].items() if ms >= 0.001)
    ranking = p["ranking"]
    loop_ms = p["thread_cpu_ms_per_image"].get("main", 0.0)
    total = list(ranking["total"].items())[:RANKED_IN_REPORT]
    own = list(ranking["own"].items())[:RANKED_IN_REPORT]
    return [
        f"### Profile of {name}: {p['spec']['concurrency']} in flight", "",
        f"{p['throughput']:.0f} calls/s under py-spy (which pauses the process to sample, so "
        f"slower than above); server CPU {p['server_cpu_ms_per_image']:.3f} ms per call; by "
        f"thread (ms/call): {threads}. {ranking['active_samples']} non-idle samples of "
        f"{ranking['samples']} at {p['rate_hz']} Hz. Raw stacks: bench/report/{p['file']}.", "",
        *bucket_table(p, loop_ms, "non-idle", "call", 3),
        "Functions by total (inclusive) time, line numbers merged:", "",
        *table(["function", "total share"], [[f"`{f}`", f"{v:.1%}"] for f, v in total]),
        "Functions by own time (the leaf frame; time in C extensions counts to the Python "
        "function that called them, Cython/C callbacks of grpc.aio to `Handle._run`):", "",
        *table(["function", "own share"], [[f"`{f}`", f"{v:.1%}"] for f, v in own]),
    ]


RANKED_IN_REPORT = 20


def trivial_section(results: Json) -> list[str]:
    """The gateway with a trivial model (bench/trivial.py), when that phase has run."""
    t = results.get("trivial")
    if not t:
        return []
    run = results.get("partial_runs", {}).get("trivial")
    arms = t["arms"]
    concurrencies = list(next(iter(arms.values())))
    when = (f"Measured alone (`{run['command']}`, started {run['started_utc']}, "
            f"{run['wall_s']:.0f} s, load average at start "
            f"{[round(v, 2) for v in run['machine']['load_average']]}, at end "
            f"{[round(v, 2) for v in run['machine'].get('load_average_end', [])]})"
            + (", a `--quick` run" if run["quick"] else "") + "; " if run else "")
    rows = []
    for c in concurrencies:
        for arm, by_c in arms.items():
            s = by_c[c]
            rows.append([c, arm, fig(s["throughput"], 0), fig(s["p50_ms"], 2),
                         med(s["p99_ms"], 2), fig(s["cpu_ms"].get("gateway"), 3),
                         med(s["cpu_ms"].get("triton"), 3), med(s["cpu_ms"].get("generator"), 3),
                         med(s["batches"].get(t["model"]), 1), str(s["errors"])])
    ratio_rows = [[f"{r['numerator']} ÷ {r['denominator']}", RATIO_FIGURES[r["figure"]],
                   *[fig(r["by_concurrency"].get(c), 2) for c in concurrencies]]
                  for r in t["ratios"]]
    added_rows = [[arm, *[fig(by_c.get(c), 2) for c in concurrencies]]
                  for arm, by_c in t["added_p50_ms"].items()]
    d = t["detection"]
    detection_rows = [[arm, fig(s["throughput"], 1), fig(s["p50_ms"], 0),
                       fig(s["cpu_ms"].get("gateway"), 2), med(s["cpu_ms"].get("triton"), 1),
                       med(s["cpu_ms"].get("generator"), 2), str(s["errors"])]
                      for arm, s in d["arms"].items()]
    variants = "; ".join(f"`{name}`: " + (" ".join(args) if args else "no extra arguments")
                         for name, args in t["server_arms"].items())
    lines = [
        "## Gateway with a trivial model", "",
        f"Triton's `{t['model']}` (tests/model_repository: yolox_nano's inputs and outputs, one "
        "box answered from the image header, microseconds per image) stands in for YOLOX so "
        "that the model's ~45 ms per image hides no gateway cost. Same Triton as above (it "
        "serves both repositories), small JPEG "
        f"({results['images']['small_bytes'] // 1000} KB) for every call; arms interleaved in "
        f"{t['reps']} rounds of {t['run_s']} s per concurrency. {when}the machine's 2 cores "
        "were shared with other agents' work during the run, so read the paired ratios rather "
        "than the absolute rates.", "",
        "- vision-grpc variants, each its own `python -m server` process with "
        f"`{' '.join(t.get('server_base_args', []))}` (admission limits above the highest "
        f"concurrency, so that no arm sheds load): {variants}. Unary `DetectObjects`, the "
        "server's default options.",
        f"- {t['direct']}: `tritonclient.grpc.aio`, one client per generator process; "
        f"{t['per_request']}: a new client (channel + stub) made and closed for every call, the "
        "seed's pattern. Same tensors as the server sends, all outputs read.",
        f"- {t['peer']}: bench/peer_fastapi.py, FastAPI on uvicorn (uvloop, httptools, one "
        "worker, access log off), one shared `tritonclient.grpc.aio` client made in the "
        "lifespan; `POST /v1/detect` with the image as the raw body, the same Triton call, "
        "detections answered as JSON (pydantic models). It checks the model name, an empty "
        "body and the 4 MiB limit, but has no auth, admission, metrics, request ids, header "
        "inspection or rich error details, which vision-grpc has. Load: one aiohttp session "
        "per generator process, keep-alive pool as large as its calls in flight, JSON parsed.",
        *([f"- {t['floor']}: bench/floor_grpc.py, a grpc.aio DetectObjects that makes the same "
           "Triton call over one shared channel (the generated stub, the request built by "
           "server/triton/wire.py) and answers the detections, and does nothing else (no "
           "validation, ids, auth, admission, metrics, logs, error details, aggregation): what "
           "grpc.aio itself costs per server call plus client call on this machine."]
          if "floor" in t else []),
        "- CPU ms per call: user+system CPU of the process group over the run ÷ completed "
        "calls; gateway = the arm's server or peer process (with any children), Triton "
        "includes its Python-backend stubs, generator = the load generator's processes "
        "(gRPC vs HTTP clients cost it differently, and it shares the 2 cores).", "",
        *table(["in flight", "arm", "calls/s", "p50 ms", "p99 ms", "gateway CPU ms/call",
                "Triton CPU ms/call", "generator CPU ms/call", "Triton avg batch", "errors"],
               rows),
        "Paired ratios (per round, then median and min–max over the rounds):", "",
        *table(["ratio", "figure", *[f"{c} in flight" for c in concurrencies]], ratio_rows),
        f"Gateway-added p50 (the arm's p50 − {t['direct']}'s p50 in the same round, ms):", "",
        *table(["gateway", *[f"{c} in flight" for c in concurrencies]], added_rows),
        f"### With real detection ({d['model']}, {d['concurrency']} in flight)", "",
        "vision-grpc (the bench's main server, yolox_nano by default) vs the FastAPI peer "
        f"naming `{d['model']}` in its query, same small JPEG, interleaved rounds of "
        f"{d['run_s']} s:", "",
        *table(["arm", "img/s", "p50 ms", "gateway CPU ms/call", "Triton CPU ms/call",
                "generator CPU ms/call", "errors"], detection_rows),
        f"vision-grpc ÷ peer: throughput {fig(d['throughput_ratio'], 2)}, gateway CPU per call "
        f"{fig(d['gateway_cpu_ratio'], 2)}.", "",
    ]
    lines += ["Before this issue's gateway changes (commit e3363c9: grpc.aio interceptors run per "
              "call, tritonclient's tensor wrappers, a separate initial-metadata send for the "
              "request id, the logging module's stack walk per access line) the same profile "
              "gave 1.15 ms per call on the event-loop thread and 1.63 ms for the whole server "
              "process under py-spy: bench/report/profile-trivial-before.txt.", ""]
    for name, p in t["profiles"].items():
        lines += _profile_ranking(name, p)
    for name, p in t.get("native_profiles", {}).items():
        lines += _native_ranking(name, p)
    return lines


def _native_ranking(name: str, p: Json) -> list[str]:
    if "error" in p:
        return [f"- {name}, native: not profiled ({p['error']})", ""]
    loop_ms = p["thread_cpu_ms_per_image"].get("main", 0.0)
    return [
        f"### Native profile of {name}: {p['spec']['concurrency']} in flight", "",
        f"`py-spy --native` at {p['rate_hz']} Hz, {p['throughput']:.0f} calls/s meanwhile, "
        f"event-loop thread {loop_ms:.3f} CPU ms per call. Own time of the event-loop thread's "
        f"{p['ranking']['busy_samples']} busy samples by where the leaf frame runs: what the "
        "Python view above books to `Handle._run` and to the Python lines that call into C "
        f"shows here as the C library or the system call. Raw stacks: bench/report/{p['file']}.",
        "",
        *table(["where", "share of busy samples", "≈ ms/call (share × event-loop thread CPU)"],
               [[f"`{place}`", f"{share:.1%}", f"{share * loop_ms:.3f}"]
                for place, share in p["ranking"]["own_by_place"].items()]),
    ]


def cpu_path_summary(results: Json) -> list[str]:
    section = results.get("cpu_path")
    if not section:
        return []
    runs = section["service"]["runs"]
    return ["- CPU path: service ÷ in-process (2 workers) " + ", ".join(
        f"{c} in flight {fig(runs[str(c)]['over_in_process'], 3)}"
        for c in section["concurrencies"]) + f"; best CPU configuration by the rule: "
        f"`{section['winner']}` (committed: `{cpu_path.COMMITTED}`)."]


def cpu_path_section(results: Json) -> list[str]:
    section = results.get("cpu_path")
    if not section:
        return []
    return [
        "## CPU path: where Triton's time goes, and the CPU configuration", "",
        "Every variant is a copy of the detection models served by a Triton of its own, all "
        "measured in the same interleaved rounds with one shared direct client, next to the "
        "in-process reference (the steps' own functions around onnxruntime, intra_op 1, one "
        "image at a time in each of 2 worker processes: section 2's best) and the service in "
        "front of the committed configuration. Ratios are per round against the in-process "
        "arm of the same round and concurrency. Command: "
        f"`{section.get('command', '.venv/bin/python -m bench.cpu_path')}`.", "",
        cpu_path.markdown(section), ""]


def markdown(results: Json, images: list[Path]) -> str:
    g = results["gateway"]
    s = results["streaming"]
    c = results["server_cost"]
    inproc = results["in_process"]
    rec = results["batching"]["recommendation"]
    batching_verdict = f"change to {rec['variant']}" if rec["change"] else \
        "keep the current defaults"
    summary = [
        "# vision-grpc benchmarks", "",
        "Generated by `python -m bench` from bench/report/results.json; do not edit by hand. "
        "Figures are medians of interleaved rounds with (min–max).", "",
        "## Summary", "",
        "- service ÷ direct Triton throughput: " + ", ".join(
            f"{c_} in flight {fig(v, 3)}" for c_, v in g["service_over_direct"].items()) + ".",
        f"- service ÷ in-process onnxruntime (best setting `{inproc['best']}`): "
        f"{fig(inproc['service_over_inprocess'], 3)}.",
        "- new client per request ÷ shared client: " + ", ".join(
            f"{c_} in flight {fig(v, 3)}" for c_, v in g["per_request_over_shared"].items()) + ".",
        f"- stream ÷ unary (small): {fig(s['small']['stream_over_other'], 3)}; stream ÷ direct "
        f"Triton (large): {fig(s['large']['stream_over_other'], 3)}.",
        f"- server: {fig(c['cpu_s_per_1000_steady'], 2, ' s')} CPU per 1 000 small requests; "
        f"RSS {c['rss_after_first_mib']:.0f} MiB after {c['chunk_requests']}, "
        f"{c['rss_after_last_mib']:.0f} MiB after {c['requests_total']}.",
        f"- batching: {batching_verdict} (section 4).",
        *cpu_path_summary(results), *trivial_summary(results), "",
    ]
    figures = ["## Figures", "", *[f"![{p.stem}]({p.as_posix()})" for p in images], ""]
    not_measured = [
        "## 7. Search", "", "The vector store has its own script, `.venv/bin/python -m "
        "bench.store` (insert rate, k=10 p50/p95 and recall@10, filtered and unfiltered, at "
        "100 000 × 1280-d and × 128-d): figures in [report/store.md](report/store.md), raw in "
        "`bench/report/store.json`; ingest "
        "end to end is in `bench/MODELS.md` (`python -m bench.models`).", "",
        "## Reports of their own", "",
        "- [report/embeddings.md](report/embeddings.md): the image embedding against "
        "MobileNetV2's canonical ImageNet preprocessing, per photo (cosine, top-1 class).",
        "- [report/idle_memory.md](report/idle_memory.md): idle Triton memory on the CPU "
        "configuration, every model loaded vs the served ones (`python -m bench.idle_memory`).",
        "- [report/ocr_input_size.md](report/ocr_input_size.md): the OCR detector's input "
        "size (ppocr_v6's det_max_side_len): 12-MP read time and reference lines found per "
        "candidate, and IngestImage of 12-MP photos with and without the cap "
        "(`python -m bench.ocr_input_size --service`).",
        "- [report/overload.md](report/overload.md): admission under overload and retry "
        "storms (`python -m bench.overload`).",
        "- [report/similarity.md](report/similarity.md): the cosine figures behind "
        "ingest.near_duplicate_cosine and people.match_cosine (`python -m bench.similarity`).",
        "",
        *GPU_SECTION,
    ]
    return "\n".join([
        *summary, *machine_section(results), *method_section(results),
        *ceiling_section(results), *gateway_section(results), *in_process_section(results),
        *per_request_section(results), *batching_section(results),
        *streaming_section(results), *cost_section(results), *profile_section(results),
        *cpu_path_section(results), *trivial_section(results), *not_measured, *figures])


def console_table(results: Json) -> str:
    g = results["gateway"]
    lines = [f"{'in flight':>9} {'service img/s':>22} {'direct img/s':>22} "
             f"{'service÷direct':>22} {'per-req÷shared':>22}"]
    for c in g["arms"]["service"]:
        lines.append(f"{c:>9} {fig(g['arms']['service'][c]['throughput']):>22} "
                     f"{fig(g['arms']['direct'][c]['throughput']):>22} "
                     f"{fig(g['service_over_direct'][c], 3):>22} "
                     f"{fig(g['per_request_over_shared'][c], 3):>22}")
    ip, s, c_ = results["in_process"], results["streaming"], results["server_cost"]
    lines += [
        f"service ÷ in-process ({ip['best']}): {fig(ip['service_over_inprocess'], 3)}",
        f"stream ÷ unary (small): {fig(s['small']['stream_over_other'], 3)}; "
        f"stream ÷ direct (large): {fig(s['large']['stream_over_other'], 3)}",
        f"server CPU per 1000 requests: {fig(c_['cpu_s_per_1000_steady'], 2, ' s')}; RSS "
        f"{c_['rss_after_first_mib']:.1f} → {c_['rss_after_last_mib']:.1f} MiB",
        f"batching recommendation: {results['batching']['recommendation']['variant']} "
        f"(change: {results['batching']['recommendation']['change']})",
        f"wall time {results['wall_s']:.0f} s",
    ]
    return "\n".join(lines)
