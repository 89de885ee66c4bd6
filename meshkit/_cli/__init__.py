"""The operator subcommands of the ``meshkit`` command, one module each.

* :mod:`~meshkit._cli.services`: ``meshkit services`` lists services and instances.
* :mod:`~meshkit._cli.call`: ``meshkit call`` makes a unary call with a JSON request.
* :mod:`~meshkit._cli.prometheus`: ``meshkit prometheus-targets`` writes file_sd targets.

Each module has ``main(argv) -> exit code`` and builds its own argparse parser;
:mod:`meshkit.cli` only dispatches.

Once its arguments parse, each command (``meshkit certs`` too) sets ``GRPC_VERBOSITY=ERROR``
before grpc loads, unless the user set ``GRPC_VERBOSITY`` or ``GRPC_TRACE``
(:func:`~meshkit._cli._common.quiet_grpc_core`): its stderr carries its own messages, not
grpc core's INFO lines (``Got goaway [2] ...`` when a server goes away mid-call).
"""
