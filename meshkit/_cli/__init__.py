"""The operator subcommands of the ``meshkit`` command, one module each.

* :mod:`~meshkit._cli.services`: ``meshkit services`` lists services and instances.
* :mod:`~meshkit._cli.call`: ``meshkit call`` makes a unary call with a JSON request.
* :mod:`~meshkit._cli.prometheus`: ``meshkit prometheus-targets`` writes file_sd targets.

Each module has ``main(argv) -> exit code`` and builds its own argparse parser;
:mod:`meshkit.cli` only dispatches.
"""
