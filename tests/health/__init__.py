"""Health checking (grpc.health.v1) and reflection of MeshServer, with real servers."""
