"""A private key (or a token) given where its file's path belongs was quoted whole.

``key_file=os.environ["TLS_KEY"]`` where the variable holds the key itself (a Kubernetes
Secret mounted as an environment variable instead of a file, the commonest mix-up), or
``CONSUL_HTTP_TOKEN_FILE`` set to the token rather than to its file: the error naming the
"path" quoted it, so the private key's PEM or the ACL token went into the message, every
traceback and log of it: ``TLSOptions`` ("cannot read private key -----BEGIN PRIVATE
KEY-----..."), ``ConsulOptions`` / ``EtcdOptions`` ("key_file must be an existing file,
got '-----BEGIN PRIVATE KEY-----\\n...'"), the type check of any path field given the
key as ``bytes``, ``ConsulOptions.from_env`` ("CONSUL_HTTP_TOKEN_FILE='<token>' cannot be
read"). Such a value (PEM armour, also base64-encoded, or a line break within it; for a
token's file, a value with no '/' that names no file) is now named by its type and
length only; a real path is quoted as before.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.auth import TLSOptions
from meshkit.auth._certs import load_private_key
from meshkit.discovery import ConsulOptions, EtcdOptions
from meshkit.errors import ConfigError, MeshError
from tests.auth.conftest import Pki

TOKEN = "5b2e0c9a-c9c9-4e1f-9d3b-0f1e2d3c4b5a"


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _key_forms(pem: str) -> dict[str, object]:
    return {
        "pem": pem,
        "pem-one-line": pem.replace("\n", ""),
        "pem-bytes": pem.encode(),
        "pem-base64": base64.b64encode(pem.encode()).decode(),
    }


def _body(pem: str) -> list[str]:
    """Pieces of the key's base64 body, each of which must not show."""
    return [line[:24] for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.mark.parametrize("form", ["pem", "pem-one-line", "pem-bytes", "pem-base64"])
def test_options_given_the_key_for_its_path_do_not_quote_it(pki: Pki, form: str) -> None:
    files = pki.issue("svc")
    pem = Path(files.key_file).read_text()
    value = _key_forms(pem)[form]
    b64 = str(_key_forms(pem)["pem-base64"])[20:60]
    builders: dict[str, Callable[[], object]] = {
        "tls": lambda: TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                                  key_file=value),  # type: ignore[arg-type]
        "consul": lambda: ConsulOptions(cert_file=str(files.cert_file),
                                        key_file=value),  # type: ignore[arg-type]
        "consul-key-alone": lambda: ConsulOptions(key_file=value),  # type: ignore[arg-type]
        "etcd": lambda: EtcdOptions(endpoints=("https://127.0.0.1:2379",),
                                    cert_file=str(files.cert_file),
                                    key_file=value),  # type: ignore[arg-type]
        "load_private_key": lambda: load_private_key(value),  # type: ignore[arg-type]
    }
    leaks = {}
    for name, build in builders.items():
        # load_private_key(bytes): pathlib's TypeError, naming the type only
        with pytest.raises((MeshError, TypeError)) as info:
            build()
        text = _text(info.value)
        shown = [p for p in [*_body(pem), b64] if p in text]
        if shown:
            leaks[name] = text
    assert leaks == {}


def test_a_real_missing_path_is_still_quoted(pki: Pki, tmp_path: Path) -> None:
    files = pki.issue("svc")
    missing = tmp_path / "nowhere" / "svc.key"
    with pytest.raises(MeshError, match=r"nowhere/svc\.key"):
        TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file, key_file=missing)
    with pytest.raises(ConfigError, match=r"nowhere/svc\.key"):
        ConsulOptions(cert_file=str(files.cert_file), key_file=str(missing))
    with pytest.raises(ConfigError, match=r"nowhere/svc\.key"):
        EtcdOptions(endpoints=("https://127.0.0.1:2379",), cert_file=str(files.cert_file),
                    key_file=str(missing))


def test_a_token_given_for_its_file_is_not_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CONSUL_HTTP_TOKEN_FILE") as info:
        ConsulOptions.from_env({"CONSUL_HTTP_TOKEN_FILE": TOKEN})
    assert TOKEN not in _text(info.value)
    # a path is a path: quoted
    missing = str(tmp_path / "consul-token")
    with pytest.raises(ConfigError, match="consul-token"):
        ConsulOptions.from_env({"CONSUL_HTTP_TOKEN_FILE": missing})
