"""Exports metrics to kpistream with OpenTelemetry's own SDK and OTLP exporters.

Usage: otlp_export.py http <base-url> <prefix>   (OTLP/HTTP protobuf, gzip, to <base-url>/v1/metrics)
       otlp_export.py grpc <host:port> <prefix>  (OTLP/gRPC MetricsService/Export)
Records a gauge <prefix>.queue.depth = 7.5 {queue=mail} and a counter
<prefix>.jobs.done with delta temporality: 3, exported, then 2, exported.
A histogram <prefix>.latency rides along and is refused by kpistream.
"""
import sys

from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader

transport, endpoint, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
delta = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA}
if transport == "http":
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    # gzip, as the OpenTelemetry Collector's otlphttp exporter sends by default.
    exporter = OTLPMetricExporter(
        endpoint=f"{endpoint}/v1/metrics", preferred_temporality=delta, compression=Compression.Gzip
    )
else:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, preferred_temporality=delta)

# A long interval: exports happen only when this script flushes.
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
provider = MeterProvider(metric_readers=[reader])
meter = provider.get_meter("kpistream-test")
gauge = meter.create_gauge(f"{prefix}.queue.depth")
jobs = meter.create_counter(f"{prefix}.jobs.done")
latency = meter.create_histogram(f"{prefix}.latency")

gauge.set(7.5, {"queue": "mail"})
jobs.add(3)
latency.record(12.0)
if not provider.force_flush(timeout_millis=10_000):
    sys.exit("first export failed")
jobs.add(2)
if not provider.force_flush(timeout_millis=10_000):
    sys.exit("second export failed")
provider.shutdown()
print("exported")
