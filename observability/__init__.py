"""Prometheus metric definitions (inference, live video) and the GPU sampler.

Imports `inference` and prometheus_client, never a server: both servers build their metrics from here.
"""
