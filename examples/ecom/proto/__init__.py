"""Protocol buffers of the e-commerce example (package ``ecom.v1``).

The ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules are generated from
the ``.proto`` files beside them by ``python -m examples.ecom.proto.generate``
(``make proto``); do not edit them by hand.
"""
