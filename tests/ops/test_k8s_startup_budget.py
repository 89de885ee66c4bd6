"""The waits a pod of deploy/k8s makes before it serves fit in its startup probe.

A service waits up to ``--db-wait-s`` (env ``ECOM_DB_WAIT_S``, default 60 s) for a
database it cannot reach at its start (9e60c0b), and orderd then up to ``--wait-users-s``
(10 s) for a userd; with the default the two passed the 60 s the startup probes allow
(30 x 2 s), so a pod whose database came up late was killed just before it would have
served. The ConfigMap sets a shorter database wait."""

from __future__ import annotations

from pathlib import Path

import yaml

from examples.ecom._process import parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


def test_the_database_and_user_service_waits_fit_in_the_startup_probe() -> None:
    env = yaml.safe_load((K8S / "config.yaml").read_text())["data"]
    db_wait_s = float(env.get("ECOM_DB_WAIT_S")
                      or parser("x", "sqlite:///x.db").parse_args([]).db_wait_s)
    users_wait_s = 10.0  # order_service --wait-users-s default
    for name in ("userd", "orderd", "summaryd"):
        docs = list(yaml.safe_load_all((K8S / f"{name}.yaml").read_text()))
        dep = next(d for d in docs if d and d["kind"] == "Deployment")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        probe = container["startupProbe"]
        budget_s = probe["periodSeconds"] * probe["failureThreshold"]
        # + the database wait's overrun: its last attempt may end up to 1 s past it
        # (_process.open_store_waiting gives an attempt at least a second)
        waits_s = db_wait_s + 1.0 + (users_wait_s if name == "orderd" else 0.0)
        assert waits_s + 5 <= budget_s, (name, waits_s, budget_s)
