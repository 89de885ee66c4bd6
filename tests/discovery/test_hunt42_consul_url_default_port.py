"""ConsulOptions: an ``addr`` (``CONSUL_HTTP_ADDR``) written as a URL without a port,
``https://consul.example``, names the scheme's own port, 443 (80 for ``http://``), as
Consul's own client reads it (``api.NewClient`` keeps ``consul.example`` as the request
URL's host, so Go's net/http dials 443) and as any URL reader does.

meshkit dialled 8501 (8500) instead: with the variables a Consul deployment hands out
(HCP Consul's ``CONSUL_HTTP_ADDR=https://<cluster>.consul.<id>.aws.hashicorp.cloud``,
an agent behind a TLS load balancer on 443), where the ``consul`` CLI worked, every
register() failed and every watch kept retrying a port nothing listens on. A bare host
(no scheme: Consul says the address must carry its port) keeps the agent's default, 8500
or 8501, and so do meshkit's own registry URIs (``consul+https://host``).
"""

from __future__ import annotations

import dataclasses

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry

URL_CASES = [
    (lambda: ConsulOptions(addr="https://consul.example"), "https://consul.example:443"),
    (lambda: ConsulOptions(addr="http://consul.example"), "http://consul.example:80"),
    (lambda: ConsulOptions(addr="https://[2001:db8::5]"), "https://[2001:db8::5]:443"),
    # https from either place wins, as in Consul's client: the URL's host on https
    (lambda: ConsulOptions(addr="http://consul.example", scheme="https"),
     "https://consul.example:443"),
    (lambda: ConsulOptions.from_env({"CONSUL_HTTP_ADDR": "https://consul.example"}),
     "https://consul.example:443"),
    (lambda: ConsulOptions.from_env({"CONSUL_HTTP_ADDR": "http://consul.example",
                                     "CONSUL_HTTP_SSL": "true"}),
     "https://consul.example:443"),
    # consul:// with no host takes CONSUL_HTTP_ADDR, as Consul's CLI reads it
    (lambda: ConsulOptions.from_uri("consul://", {"CONSUL_HTTP_ADDR": "https://c.example/"}),
     "https://c.example:443"),
]
URL_IDS = ["https", "http", "ipv6", "scheme-option", "env", "env-ssl", "uri-env"]

KEPT_CASES = [
    (lambda: ConsulOptions(addr="consul.example"), "http://consul.example:8500"),
    (lambda: ConsulOptions(addr="consul.example", scheme="https"),
     "https://consul.example:8501"),
    (lambda: ConsulOptions.from_env({"CONSUL_HTTP_ADDR": "consul.example",
                                     "CONSUL_HTTP_SSL": "true"}),
     "https://consul.example:8501"),
    (lambda: ConsulOptions(addr="https://consul.example:8501"), "https://consul.example:8501"),
    (lambda: ConsulOptions.from_uri("consul+https://consul.example", {}),
     "https://consul.example:8501"),
    (lambda: ConsulOptions.from_uri("consul+http://consul.example", {}),
     "http://consul.example:8500"),
    (lambda: ConsulOptions.from_uri("consul+http://consul.example",
                                    {"CONSUL_HTTP_SSL": "true"}),
     "https://consul.example:8501"),
    (lambda: ConsulOptions.from_uri("consul://consul.example", {}),
     "http://consul.example:8500"),
    (lambda: ConsulOptions.from_uri("consul+https://consul.example:9501", {}),
     "https://consul.example:9501"),
]
KEPT_IDS = ["bare", "bare-https", "bare-env-ssl", "url-with-port", "uri-https", "uri-http",
            "uri-http-env-ssl", "uri-consul", "uri-port"]


@pytest.mark.parametrize(("build", "base_url"), URL_CASES, ids=URL_IDS)
def test_a_url_without_a_port_names_its_schemes_port(build: object, base_url: str) -> None:
    options = build()  # type: ignore[operator]
    assert options.base_url == base_url
    # where the registry's requests go
    client = ConsulRegistry(options)
    assert repr(client) == f"ConsulRegistry(addr={base_url!r}, check='ttl')"
    # and what a replace() keeps
    assert dataclasses.replace(options, ttl_s=30).base_url == base_url


@pytest.mark.parametrize(("build", "base_url"), KEPT_CASES, ids=KEPT_IDS)
def test_a_bare_host_and_registry_uris_keep_the_agents_port(build: object,
                                                             base_url: str) -> None:
    assert build().base_url == base_url  # type: ignore[operator]


async def test_the_registrys_requests_go_to_the_urls_port() -> None:
    registry = ConsulRegistry(ConsulOptions.from_env(
        {"CONSUL_HTTP_ADDR": "https://consul.example"}))
    try:
        assert registry._get_client().http.base_uri == "https://consul.example:443"
    finally:
        await registry.close()
