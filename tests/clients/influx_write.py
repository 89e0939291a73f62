"""Writes line protocol to kpistream with InfluxDB's own Python client (PyPI influxdb-client).

Usage: influx_write.py <base-url> <kpi-prefix> [token]
Writes <prefix>_cpu (field value) and <prefix>_cpu_idle (field idle) once,
retries the same write, then sends a batch whose second line is bad.
Prints one JSON object: the bad write's status and body.
"""
import json
import sys
import time

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

url, prefix = sys.argv[1], sys.argv[2]
token = sys.argv[3] if len(sys.argv) > 3 else "unused"
ts = int(time.time())
with InfluxDBClient(url=url, token=token, org="kpistream") as client:
    write = client.write_api(write_options=SYNCHRONOUS)
    lines = [f"{prefix}_cpu,host=web-1 value=0.5,idle=90i {ts}"]
    write.write(bucket="kpis", record=lines, write_precision=WritePrecision.S)
    # A retry of the very same write: it must count once.
    write.write(bucket="kpis", record=lines, write_precision=WritePrecision.S)
    bad = {"status": None, "body": None}
    try:
        write.write(
            bucket="kpis",
            record=[f"{prefix}_ok value=1 {ts}", f"{prefix}_ok value=abc {ts}"],
            write_precision=WritePrecision.S,
        )
    except ApiException as e:
        bad = {"status": e.status, "body": e.body}
print(json.dumps(bad))
