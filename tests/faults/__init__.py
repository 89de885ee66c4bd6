"""Fault scenarios of issue 12 on real processes: ``python -m tests.faults`` / ``make chaos``.

* :mod:`tests.faults.scenarios` -- the scenarios, one class each, with their criteria;
* :mod:`tests.faults._runner` -- runs and judges one scenario; the shared criteria; the table;
* :mod:`tests.faults._stack` -- the ecom stack per scenario (temp dir, certificates, registry,
  processes, PostgreSQL/Redis behind :class:`tests.support.tcp_proxy.TcpProxy`);
* :mod:`tests.faults._workload` -- the 16-caller workload through ``meshkit.dial`` and the
  recovery measure;
* :mod:`tests.faults._checks`, :mod:`._certs`, :mod:`._h2` -- status-message hygiene, logs,
  metrics, memory and order audits; certificates the mesh must refuse; a bare HTTP/2 client;
* ``test_quick.py`` -- the quick subset as pytest tests (part of ``make test``).
"""
