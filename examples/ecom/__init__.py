"""E-commerce example: a UserService and an OrderService over gRPC.

The business part (protos, storage, validation, servicers) runs on plain
grpc.aio; meshkit adds discovery, balancing, security and resilience around it.
"""
