"""The request path between clients and model servers (weighted, sticky, shadow routing)."""
