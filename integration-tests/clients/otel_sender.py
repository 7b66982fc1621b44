"""Sends known metrics to an OTLP/gRPC endpoint with the official OpenTelemetry Python SDK.

Used by the metrics-collector tests: the collector must report exactly what this sent.

    otel_sender.py --endpoint http://127.0.0.1:4317 --temporality delta --prefix shop

Records, under `<prefix>.orders` (a counter), 100 adds of 1 with status=ok and 37 with
status=error, and under `<prefix>.latency` (a histogram in seconds, explicit bounds) the values
0.001 * i for i in 1..=200. Exports through a periodic reader and flushes before exiting.
"""

import argparse

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

BOUNDS = [0.025, 0.05, 0.1, 0.2, 0.4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--temporality", choices=["delta", "cumulative"], required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()

    temporality = (
        AggregationTemporality.DELTA
        if args.temporality == "delta"
        else AggregationTemporality.CUMULATIVE
    )
    exporter = OTLPMetricExporter(
        endpoint=args.endpoint,
        insecure=True,
        preferred_temporality={Counter: temporality, Histogram: temporality},
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=200)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "python-shop"}),
        metric_readers=[reader],
        views=[
            View(
                instrument_name=f"{args.prefix}.latency",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=BOUNDS),
            )
        ],
    )
    meter = provider.get_meter("otel_sender")
    orders = meter.create_counter(f"{args.prefix}.orders", description="Orders placed")
    latency = meter.create_histogram(
        f"{args.prefix}.latency", unit="s", description="Checkout latency"
    )
    for i in range(137):
        orders.add(1, {"status": "ok" if i < 100 else "error"})
        if i == 60:
            # Let one export happen in the middle, so the collector sees several points.
            reader.force_flush()
    for i in range(1, 201):
        latency.record(0.001 * i)
    provider.force_flush()
    provider.shutdown()


if __name__ == "__main__":
    main()
