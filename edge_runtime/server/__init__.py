"""The device daemon (`edge-runtime serve`): Open Inference Protocol (KServe V2) and /v1 over HTTP,
dynamic batching, hot swap on SIGHUP, Prometheus metrics, sd_notify. See docs/daemon.md."""
