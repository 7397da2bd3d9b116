"""Generated protobuf and gRPC stubs of the canarycast.v1 API (see protos/)."""
