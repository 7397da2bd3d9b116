"""canarycast: LSTM time-series forecasts over gRPC, shipped safely with canaries."""

__version__ = "0.1.0"
