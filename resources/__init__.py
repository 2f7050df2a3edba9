"""Read-only MCP resources: run logs and metrics, dataset reports, evaluations, deployments."""
