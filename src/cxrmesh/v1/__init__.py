"""Generated gRPC/protobuf code of the cxrmesh.v1 contracts (see protos/; do not edit)."""
