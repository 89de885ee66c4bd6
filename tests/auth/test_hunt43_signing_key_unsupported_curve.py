"""A JWT signing key PEM of a curve ``cryptography`` does not support is a ConfigError.

``SigningKey.from_pem`` documents ``ConfigError`` for a PEM that is unparsable or of an
unsupported type, and ``KeySet.from_directory`` turns that into a ``ConfigError`` naming
the file. An EC key on a curve OpenSSL knows but ``cryptography`` does not
(``prime239v1`` here, as ``openssl genpkey -algorithm EC -pkeyopt
ec_paramgen_curve:prime239v1`` writes it; SM2 and explicit-parameter keys alike) made
``load_pem_private_key`` raise ``cryptography.exceptions.UnsupportedAlgorithm``, which
neither caught: a service starting over such a key directory died of it, the file
unnamed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import KeySet, SigningKey
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

# a throwaway key, made for this test only (prime239v1, OID 1.2.840.10045.3.1.4)
PRIME239V1_KEY = b"""-----BEGIN PRIVATE KEY-----
MIGBAgEAMBMGByqGSM49AgEGCCqGSM49AwEEBGcwZQIBAQQeI1hP5z3PPhO9BplO
8HsKuE61Ed0NF7Fy8bx173+zoUADPgAERBmo5MTMqF7aafFOpmsS559HHjwUCl9W
VpaX+IeaCCKAF5zo8rCpcnCoQ985KrGZg+wtLbV6BWO2/04K
-----END PRIVATE KEY-----
"""


def test_from_pem_refuses_an_unsupported_curve_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ECDSA P-256 or Ed25519") as err:
        SigningKey.from_pem(PRIME239V1_KEY)
    assert "MIGB" not in str(err.value)


def test_from_directory_names_the_file_of_an_unsupported_curve(tmp_path: Path) -> None:
    (tmp_path / "jwt-odd.key").write_bytes(PRIME239V1_KEY)
    with pytest.raises(ConfigError, match=r"jwt-odd\.key") as err:
        KeySet.from_directory(tmp_path, create=False)
    assert "MIGB" not in str(err.value)
