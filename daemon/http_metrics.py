"""GET /metrics: the HTTP API's requests and answers, and the daemon's shared state, for Prometheus.

Written with the official client library (prometheus_client) into a registry of this server's own, so two
servers in one process (the tests) never share counters. The HTTP API counts its own requests and the
tokens they cost; the queue and the prompt cache are read from the scheduler when scraped, so they cover
every front end (gRPC included): the cache is shared, and so is its hit rate.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from omnid.daemon.events import Usage
from omnid.daemon.priorities import Priority
from omnid.daemon.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Time to first token: from a few ms (a cache hit on a small model) to many seconds (a long cold prompt).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Decode speed: a large model on a CPU (a few tokens/s) to the tiny test model (thousands).
DECODE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)


class Meters:
    """What the HTTP API counts, and the collector of the scheduler's own numbers."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("omnid_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("omnid_prompt_tokens", "Prompt tokens of HTTP answers (cached included)",
                                     ["endpoint"], registry=r)
        self.cached_tokens = Counter("omnid_cached_prompt_tokens",
                                     "Prompt tokens of HTTP answers reused from the shared prompt cache",
                                     ["endpoint"], registry=r)
        self.generated_tokens = Counter("omnid_generated_tokens", "Tokens generated for HTTP answers",
                                        ["endpoint"], registry=r)
        self.ttft = Histogram("omnid_time_to_first_token_seconds",
                              "Time from an HTTP request's submission to its first generated token",
                              ["endpoint"], buckets=TTFT_BUCKETS, registry=r)
        self.decode_rate = Histogram("omnid_decode_tokens_per_second", "Decode speed of HTTP answers",
                                     ["endpoint"], buckets=DECODE_BUCKETS, registry=r)
        r.register(_SchedulerCollector(scheduler))

    def answered(self, endpoint: str, usage: Usage) -> None:
        self.prompt_tokens.labels(endpoint).inc(usage.prompt_tokens)
        self.cached_tokens.labels(endpoint).inc(usage.cached_tokens)
        self.generated_tokens.labels(endpoint).inc(usage.generated_tokens)
        if usage.generated_tokens:
            self.ttft.labels(endpoint).observe(usage.time_to_first_token_ms / 1000)
        if usage.decode_tokens_per_second:
            self.decode_rate.labels(endpoint).observe(usage.decode_tokens_per_second)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector(Collector):
    """The queue and the shared prompt cache, read at scrape time (all front ends together)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self._scheduler
        yield GaugeMetricFamily("omnid_queue_depth", "Requests waiting for the decoder", value=s.queue_depth)
        by_class = GaugeMetricFamily("omnid_queue_depth_by_class", "Requests waiting for the decoder, by class",
                                     labels=["class"])
        for priority in Priority:
            by_class.add_metric([priority.name.lower()], s.queue_depth_of(priority))
        yield by_class
        yield GaugeMetricFamily("omnid_sequences", "Decoder sequences (requests that run at once)",
                                value=s.n_sequences)
        yield GaugeMetricFamily("omnid_sequences_in_use", "Decoder sequences running a request now",
                                value=s.sequences_in_use)
        batch_sequences, batch_tokens, steps = s.batch_stats()
        yield GaugeMetricFamily("omnid_batch_sequences", "Sequences per decode step (mean of the recent steps)",
                                value=batch_sequences)
        yield GaugeMetricFamily("omnid_batch_tokens", "Tokens per decode step, prefill chunks included (mean of "
                                "the recent steps)", value=batch_tokens)
        yield CounterMetricFamily("omnid_decode_steps", "Batched decode steps since the model was loaded",
                                  value=steps)
        yield GaugeMetricFamily("omnid_queue_capacity", "Requests that may wait for the decoder", value=s.max_queue)
        yield GaugeMetricFamily("omnid_decoder_busy", "1 while the decoder runs a job", value=int(s.busy))
        yield GaugeMetricFamily("omnid_model_loaded", "1 while the model is in memory", value=int(s.loaded))
        if s.cache is None:
            return
        stats = s.cache.stats()
        yield CounterMetricFamily("omnid_prompt_cache_hits", "Prompts that reused a cached prefix (all front "
                                  "ends)", value=stats.hits)
        yield CounterMetricFamily("omnid_prompt_cache_misses", "Prompts that reused nothing", value=stats.misses)
        yield CounterMetricFamily("omnid_prompt_cache_reused_tokens", "Prompt tokens reused from the cache",
                                  value=stats.tokens_reused)
        yield GaugeMetricFamily("omnid_prompt_cache_ram_bytes", "RAM held by the prompt cache", value=stats.ram_bytes)
        yield GaugeMetricFamily("omnid_prompt_cache_entries", "Snapshots in the prompt cache's RAM tier",
                                value=stats.entries)
