"""MessageVerifier and trust domains: a federated ``ca.pem`` (this mesh's CA and a partner
mesh's, each naming its trust domain) with no ``allowed_publishers`` admitted the
partner's ``orderd`` as a verified ``orderd`` publisher (a handler that checks
``delivery.publisher.service == "orderd"`` acted on it), while the gRPC peer check refuses
a peer of a foreign trust domain by default. The verifier now takes the trust domain the
bundle's CAs name, refuses to guess among several (ConfigError), and takes
``trust_domains=`` to say which.
"""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from meshkit.auth import create_ca, issue_workload
from meshkit.errors import ConfigError
from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageIdentityError,
    MessageSigner,
    MessageVerifier,
    Publisher,
    PublishOptions,
)
from tests.messaging.conftest import Bus

_Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _mesh(td: str) -> tuple[bytes, _Pair]:
    ca_key, ca = create_ca(trust_domain=td)
    key, cert = issue_workload(ca_key, ca, "orderd")
    return ca.public_bytes(serialization.Encoding.PEM), (cert, key)


@pytest.fixture(scope="module")
def meshes() -> tuple[bytes, bytes, _Pair, _Pair]:
    """(own CA PEM, federated bundle PEM, own orderd, partner orderd)."""
    own_pem, own = _mesh("meshkit.test")
    partner_pem, partner = _mesh("partner.test")
    return own_pem, own_pem + partner_pem, own, partner


def _signed(pair: _Pair, subject: str = "orders.created") -> dict[str, str]:
    headers: dict[str, str] = {}
    MessageSigner(*pair).sign(headers, msg_id="e-1", subject=subject, payload=b"x")
    return headers


def _verify(v: MessageVerifier, headers: dict[str, str]) -> str:
    return v.verify(headers, msg_id="e-1", subject="orders.created", payload=b"x").spiffe_id


def test_a_federated_bundle_needs_trust_domains(
        meshes: tuple[bytes, bytes, _Pair, _Pair]) -> None:
    own_pem, federated, own, partner = meshes
    with pytest.raises(ConfigError) as err:
        _verify(MessageVerifier(federated), _signed(partner))  # passed before
    assert "meshkit.test" in str(err.value) and "partner.test" in str(err.value)
    mine = MessageVerifier(federated, trust_domains=("meshkit.test",))
    assert _verify(mine, _signed(own)) == "spiffe://meshkit.test/svc/orderd"
    with pytest.raises(MessageIdentityError, match="foreign trust domain"):
        _verify(mine, _signed(partner))
    both = MessageVerifier(federated, trust_domains=["meshkit.test", "partner.test"])
    assert _verify(both, _signed(partner)) == "spiffe://partner.test/svc/orderd"
    # allowed_publishers decide when given, as before
    pats = MessageVerifier(federated, allowed_publishers=("spiffe://partner.test/svc/*",))
    assert _verify(pats, _signed(partner)) == "spiffe://partner.test/svc/orderd"
    with pytest.raises(MessageIdentityError, match="not allowed"):
        _verify(pats, _signed(own))
    # a single-trust-domain bundle works as before, without the option
    assert _verify(MessageVerifier(own_pem), _signed(own)) == \
        "spiffe://meshkit.test/svc/orderd"


@pytest.mark.parametrize("bad", ["meshkit.test", (), ("Meshkit.Test",),
                                 ("spiffe://meshkit.test",)], ids=["str", "empty", "upper",
                                                                   "uri"])
def test_bad_trust_domains_are_refused_when_made(
        meshes: tuple[bytes, bytes, _Pair, _Pair], bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        MessageVerifier(meshes[1], trust_domains=bad)  # type: ignore[arg-type]
    if bad:
        assert repr(bad if isinstance(bad, str) else bad[0]) in str(err.value)  # type: ignore[index]


def test_from_file_takes_trust_domains(
        meshes: tuple[bytes, bytes, _Pair, _Pair], tmp_path: object) -> None:
    from pathlib import Path
    ca = Path(str(tmp_path)) / "ca.pem"
    ca.write_bytes(meshes[1])
    v = MessageVerifier.from_file(ca, trust_domains=("meshkit.test",), reload_interval_s=None)
    with pytest.raises(MessageIdentityError, match="foreign trust domain"):
        _verify(v, _signed(meshes[3]))


async def test_a_consumer_refuses_the_partner_meshs_orderd(
        bus: Bus, prom: CollectorRegistry, meshes: tuple[bytes, bytes, _Pair, _Pair]) -> None:
    """On NATS: the partner's signed event is refused (dead-lettered as refused), the
    mesh's own one is handled with its publisher."""
    _, federated, own, partner = meshes
    got: list[str] = []

    async def handle(d: Delivery) -> None:
        got.append(d.publisher.spiffe_id if d.publisher else "")

    for pair, msg_id in ((partner, "p-1"), (own, "o-1")):
        pub = Publisher(bus.js, PublishOptions(registry=prom, signer=MessageSigner(*pair)))
        await pub.publish(bus.subject, b"x", msg_id=msg_id)
    c = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="d1", filter_subject=bus.subject,
        dead_letter_subject=bus.dlq, fetch_timeout_s=0.2, registry=prom,
        verifier=MessageVerifier(federated, trust_domains=("meshkit.test",))))
    end = time.monotonic() + 10
    while not got and time.monotonic() < end:
        await c.run_once()
    assert got == ["spiffe://meshkit.test/svc/orderd"]
    assert prom.get_sample_value("meshkit_messaging_consumed_total", {
        "subject": bus.subject, "consumer": "d1", "outcome": "refused"}) == 1


@pytest.mark.parametrize("pattern", ["spiffe://meshkit.tset/svc/orderd",
                                     "spiffe://partner.*/svc/*"], ids=["typo", "other"])
def test_allowed_publishers_of_no_accepted_trust_domain_are_refused_when_made(
        meshes: tuple[bytes, bytes, _Pair, _Pair], pattern: str) -> None:
    """A pattern whose trust domain is none the verifier takes (a typo'd domain) admitted
    no publisher: every event was refused and dead-lettered, and the verifier was made
    without a word (the TLS side's allowed_peers refuses such a pattern when built)."""
    own_pem, federated, own, _ = meshes
    with pytest.raises(ConfigError) as err:
        v = MessageVerifier(own_pem, allowed_publishers=(pattern,))
        _verify(v, _signed(own))  # refused: "not allowed", before
    assert repr(pattern) in str(err.value) and "meshkit.test" in str(err.value)
    with pytest.raises(ConfigError, match=r"meshkit\.tset"):
        MessageVerifier(federated, trust_domains=("meshkit.test", "partner.test"),
                        allowed_publishers=("spiffe://meshkit.tset/svc/orderd",))
    for ok in ("*", "spiffe://*/svc/orderd", "spiffe://meshkit.*/svc/orderd"):
        assert _verify(MessageVerifier(own_pem, allowed_publishers=(ok,)),
                       _signed(own)) == "spiffe://meshkit.test/svc/orderd"
