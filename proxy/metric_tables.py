"""Counters, histograms and a gauge kept as plain floats in dicts keyed by label tuples, rendered as
Prometheus families only when /metrics is scraped; they render as prometheus-client's own would."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

import prometheus_client.metrics
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# No locks: every update and every scrape runs on the event loop thread (the proxy is single-threaded
# asyncio and make_aiohttp_handler renders synchronously), and prometheus-client's per-child lock
# plus method dispatch was about a tenth of the proxy's CPU per request.

Labels = tuple[str, ...]

# The `le` text prometheus-client gives a bucket bound (it ships no type hints for it).
_le_text: Callable[[float], str] = floatToGoString


def _created_enabled() -> bool:
    # Follow PROMETHEUS_DISABLE_CREATED_SERIES / disable_created_metrics() like the library's metrics.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class _Table:
    """Series of one labelled metric; subclasses say what a series holds."""

    __slots__ = ("doc", "labelnames", "name", "series")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.series: dict[Labels, list[float]] = {}

    def remove(self, labels: Labels) -> None:
        self.series.pop(labels, None)

    def remove_matching(self, pos: int, value: str) -> None:
        """Drops every series whose label at `pos` is `value`."""
        for labels in [k for k in self.series if k[pos] == value]:
            del self.series[labels]

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _family(self) -> Metric:
        raise NotImplementedError


class CounterTable(_Table):
    """A labelled counter: each series is [value, created unix time]."""

    __slots__ = ()

    def __init__(self, registry: CollectorRegistry, name: str, doc: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, doc, labelnames)
        registry.register(self)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        s = self.series.get(labels)
        if s is None:
            self.series[labels] = [float(amount), time.time()]
        else:
            s[0] += amount

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        created = _created_enabled()
        for labels, (value, ts) in self.series.items():
            fam.add_metric(labels, value, ts if created else None)
        yield fam


class HistogramTable(_Table):
    """A histogram: each series is one count per bucket (not cumulative), then the sum, then the
    created unix time. An unlabelled histogram exports its one series from the start."""

    __slots__ = ("_le", "bounds")

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.bounds = tuple(float(b) for b in buckets) + (math.inf,)
        self._le = tuple(_le_text(b) for b in self.bounds)
        if not self.labelnames:
            self.series[()] = self._new()
        registry.register(self)

    def _new(self) -> list[float]:
        return [0.0] * len(self.bounds) + [0.0, time.time()]

    def observe(self, labels: Labels, amount: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = self._new()
        # The first bucket whose upper bound is >= amount, as prometheus-client's `amount <= bound`.
        s[bisect_left(self.bounds, amount)] += 1
        s[-2] += amount

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        created = _created_enabled()
        n = len(self.bounds)
        for labels, s in self.series.items():
            acc = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, s[:n], strict=True):
                acc += count
                buckets.append((le, acc))
            fam.add_metric(labels, buckets, s[n])
            if created:
                fam.samples.append(
                    Sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)), s[n + 1], None)
                )
        yield fam


class GaugeValue:
    """An unlabelled gauge with Gauge's inc()/dec()/set()."""

    __slots__ = ("doc", "name", "value")

    def __init__(self, registry: CollectorRegistry, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, labels=())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, value=self.value)
