"""The kopf operator: runs Collectors for Workloads and reports their status and gauges."""
