"""Interop with gRPC implementations nobody here wrote (grpc-js), both ways."""
