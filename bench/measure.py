"""One measured run: the load generator's figures plus what it cost each process (server,
Triton with its stubs, the generator itself) and Triton's executed batch sizes meanwhile."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.load import LoadGenerator, Run, RunSpec
from bench.procs import ProcessGroup, average_batches, triton_batch_counters


@dataclass
class Measured:
    """A run's figures; cpu_ms are CPU milliseconds per completed image."""

    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    completed: int
    errors: int
    wall_s: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per process group
    cores_busy: float = 0.0  # CPU seconds of all groups per second, start and tail included
    batches: dict[str, float] = field(default_factory=dict)  # model → average batch size
    first_error: str = ""


class Meter:
    """Runs specs on the generator and reads the named process groups and Triton around them."""

    def __init__(self, generator: LoadGenerator, groups: dict[str, ProcessGroup]) -> None:
        self.generator = generator
        self.groups = groups

    def run(self, spec: RunSpec, triton_url: str | None = None) -> tuple[Run, Measured]:
        counters = triton_batch_counters(triton_url) if triton_url else {}
        before = {name: group.usage().cpu_s for name, group in self.groups.items()}
        began = time.monotonic()
        run = self.generator.run(spec)
        elapsed = time.monotonic() - began
        after = {name: group.usage().cpu_s for name, group in self.groups.items()}
        batches = average_batches(counters, triton_batch_counters(triton_url)) \
            if triton_url else {}
        spent = {name: after[name] - before[name] for name in self.groups}
        measured = Measured(
            throughput=run.throughput, p50_ms=run.p50_ms, p95_ms=run.p95_ms, p99_ms=run.p99_ms,
            completed=run.completed, errors=run.errors, wall_s=run.wall_s,
            cpu_ms={name: 1000.0 * cpu / run.completed for name, cpu in spent.items()},
            cores_busy=sum(spent.values()) / elapsed,
            batches=batches, first_error=run.first_error)
        return run, measured
