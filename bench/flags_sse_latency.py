#!/usr/bin/env python3
"""How long a flag change takes to reach a connected SSE client.

Usage: bench/flags_sse_latency.py http://127.0.0.1:7070 [CHANGES]

Connects to GET /ofrep/v1/events, then CHANGES times (default 200): flips a flag of the
`default` set with PUT /v1/flagsets/default/flags/sse-probe and measures from just before the
PUT is sent to the arrival of the refetchEvaluation message. Prints the median, p90, p99 and max
in milliseconds. Standard library only."""

import http.client
import json
import statistics
import sys
import time
import urllib.parse

base = urllib.parse.urlparse(sys.argv[1])
changes = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def put_flag(connection, text):
    body = json.dumps({"state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"})
    connection.request("PUT", "/v1/flagsets/default/flags/sse-probe", body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    if response.status >= 300:
        sys.exit(f"PUT failed: {response.status}")


writer = http.client.HTTPConnection(base.hostname, base.port)
put_flag(writer, "start")
stream = http.client.HTTPConnection(base.hostname, base.port)
stream.request("GET", "/ofrep/v1/events", headers={"accept": "text/event-stream"})
events = stream.getresponse()

latencies = []
for n in range(changes):
    started = time.perf_counter()
    put_flag(writer, f"value-{n}")
    while True:
        line = events.fp.readline().decode()
        if line.startswith("data:") and "refetchEvaluation" in line:
            break
    latencies.append((time.perf_counter() - started) * 1000)

latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(
    f"{changes} changes: median {statistics.median(latencies):.2f} ms, p90 {pick(0.9):.2f} ms, "
    f"p99 {pick(0.99):.2f} ms, max {latencies[-1]:.2f} ms (PUT sent to SSE message received)"
)
