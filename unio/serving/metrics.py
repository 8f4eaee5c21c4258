"""The server's counters, written in the Prometheus text exposition format (version 0.0.4).

No client library: four families are few enough to write by hand, and this keeps ``unio[serve]``
to the web stack alone. Every update happens on the event loop's thread; a lock still guards them
so that a scrape never reads a half-written histogram.

    unio_requests_total{task, status}          counter    requests answered, by task and HTTP status
    unio_request_latency_seconds{task}         histogram  arrival to answer, per task
    unio_batch_size{task}                      histogram  requests per model call (a call mixing tasks: under each)
    unio_model_busy_seconds_total               counter    time the worker spent in model calls
    unio_queue_length                          gauge      requests waiting for the model
    unio_model_ready                           gauge      1 once the model is loaded
"""
from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)   # cumulative at render time
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
                break

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for edge, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{_num(edge)}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_num(self.sum)}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


class Metrics:
    """Counters of one server; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batches: dict[str, _Histogram] = {}
        self.busy = 0.0
        self.queue_length = lambda: 0          # set by the app: the batcher's live count
        self.ready = lambda: False

    def request(self, task: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(task, int(status))] += 1
            if seconds is not None:
                self.latency.setdefault(task, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, tasks, size: int, seconds: float) -> None:
        """One model call of ``size`` requests, serving ``tasks`` (a name, or the names in a mixed
        call: its size is observed under each)."""
        with self._lock:
            for task in [tasks] if isinstance(tasks, str) else tasks:
                self.batches.setdefault(task, _Histogram(BATCH_BUCKETS)).observe(size)
            self.busy += seconds

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP unio_requests_total Requests answered, by task and HTTP status.",
                     "# TYPE unio_requests_total counter"]
            for (task, status), n in sorted(self.requests.items()):
                lines.append(f'unio_requests_total{{task="{_label(task)}",status="{status}"}} {n}')
            lines += ["# HELP unio_request_latency_seconds Time from a request's arrival to its answer.",
                      "# TYPE unio_request_latency_seconds histogram"]
            for task, h in sorted(self.latency.items()):
                lines += h.lines("unio_request_latency_seconds", f'task="{_label(task)}"')
            lines += ["# HELP unio_batch_size Rows decoded by one model step (step batching) or requests answered by "
                      "one model call (call batching).",
                      "# TYPE unio_batch_size histogram"]
            for task, h in sorted(self.batches.items()):
                lines += h.lines("unio_batch_size", f'task="{_label(task)}"')
            lines += ["# HELP unio_model_busy_seconds_total Time the worker spent in model calls.",
                      "# TYPE unio_model_busy_seconds_total counter", f"unio_model_busy_seconds_total {_num(self.busy)}"]
            lines += ["# HELP unio_queue_length Requests waiting for the model.",
                      "# TYPE unio_queue_length gauge", f"unio_queue_length {int(self.queue_length())}",
                      "# HELP unio_model_ready 1 once the model is loaded and serving.",
                      "# TYPE unio_model_ready gauge", f"unio_model_ready {int(bool(self.ready()))}"]
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _label(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
