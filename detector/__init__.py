"""audit-detector: threats and misuse in Kubernetes audit logs."""

__version__ = "0.1.0"
