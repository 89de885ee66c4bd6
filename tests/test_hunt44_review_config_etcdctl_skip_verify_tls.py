"""``ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true`` asks etcdctl for TLS (without checking the
server's certificate): etcd's client/v3 ``newTLSConfig`` makes a TLS config for it even
without a TLS file or ``ETCDCTL_INSECURE_TRANSPORT=false``, so etcdctl dials the
endpoints written without a scheme, and its default ``127.0.0.1:2379``, over TLS
(review of e818c305, which did so for the other ways TLS is asked for). EtcdOptions.from_env
kept them ``http://``: plain text, its ``verify=False`` meaning nothing."""

from __future__ import annotations

from meshkit.discovery import EtcdOptions


def test_skip_verify_dials_the_default_member_with_tls() -> None:
    """No endpoints: https://127.0.0.1:2379, verify off."""
    opts = EtcdOptions.from_env({"ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "true"})
    assert opts.endpoints == ("https://127.0.0.1:2379",)
    assert opts.verify is False


def test_skip_verify_makes_scheme_less_endpoints_https() -> None:
    """ETCDCTL_ENDPOINTS without a scheme: https."""
    opts = EtcdOptions.from_env({"ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "true",
                                 "ETCDCTL_ENDPOINTS": "10.0.0.1:2379,10.0.0.2:2379"})
    assert opts.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")


def test_skip_verify_false_changes_nothing() -> None:
    """ETCDCTL_INSECURE_SKIP_TLS_VERIFY=false: plain http, as etcdctl's default."""
    assert EtcdOptions.from_env({"ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "false"}).endpoints == (
        "http://127.0.0.1:2379",)
