"""Parses Prometheus text exposition from stdin with the official Python client's parser
(prometheus_client.parser, pinned in .ci/run) and prints one JSON object per sample:
{"name": ..., "labels": {...}, "value": ...}. A document the parser refuses exits non-zero."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
