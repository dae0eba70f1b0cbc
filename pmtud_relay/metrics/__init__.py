"""Prometheus metrics, read at scrape time from plain counters; /metrics, /healthz, /readyz.

The packet path never touches a prometheus_client object. The daemon bumps plain integers
in a :class:`Stats` (dict keyed by ``(interface, family, reason)``, one ``dict.get`` + store
per frame) and a :class:`LatencyHistogram` (a list of bucket counts); a custom collector,
:class:`RelayCollector`, turns them into metric families only when Prometheus scrapes.
The collector lives in its own :class:`~prometheus_client.CollectorRegistry`, never the
library's global default one.

Labels are bounded: interface names, the address family, the closed :class:`Reason` enum,
the limiter bucket, errno names. Never an IP address or a port.

:class:`MetricsServer` is a minimal HTTP/1.1 server on the daemon's own asyncio loop:
``/metrics`` (Prometheus text or OpenMetrics by ``Accept``), ``/healthz`` (200 while the
loop answers) and ``/readyz`` (200 once capture is open on every configured interface, 503
with the reason before and while it waits for an interface). :func:`bind` opens
the listening socket synchronously so "address in use" is reported at start-up, naming
``metrics_address``.

One concern a module: :mod:`~pmtud_relay.metrics.counters` (the plain counters and overrun
probes), :mod:`~pmtud_relay.metrics.collectors` (scrape-time collectors, the registry) and
:mod:`~pmtud_relay.metrics.server` (the HTTP listener). Every public name stays importable
from ``pmtud_relay.metrics``.
"""

from __future__ import annotations

from pmtud_relay.metrics.collectors import PREFIX, RelayCollector, SelfProcessCollector, build_registry
from pmtud_relay.metrics.counters import (
    LATENCY_BUCKETS,
    PACKET_STATISTICS,
    LatencyHistogram,
    Stats,
    afpacket_drops,
    delta_probe,
)
from pmtud_relay.metrics.server import MetricsError, MetricsServer, bind

__all__ = [
    "LATENCY_BUCKETS", "PACKET_STATISTICS", "PREFIX", "LatencyHistogram", "MetricsError", "MetricsServer",
    "RelayCollector", "SelfProcessCollector", "Stats", "afpacket_drops", "bind", "build_registry", "delta_probe",
]
