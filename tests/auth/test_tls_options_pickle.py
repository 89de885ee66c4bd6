"""Options carrying ``TLSOptions`` pickle, copy and deep-copy.

A user hands ``ServeOptions(tls=...)`` / ``DialOptions(tls=...)`` to worker processes
(``multiprocessing`` with spawn, ``ProcessPoolExecutor``: both pickle their arguments) or
deep-copies them (config frameworks, test fixtures), as the options without TLS allow
(tests/test_config_validation.py). With mTLS, the production setting, every one of these
raised ``TypeError: cannot pickle '...ObjectIdentifier' object`` (or ``x509.Store``): the
options held the material and the peer verifier they had read. A pickled ``TLSOptions``
is now built again from its fields where it is unpickled (the files read there, as a
worker building its own would); a copy or deep copy shares what was read (immutable)
and its verifier gets a cache of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import meshkit
from meshkit.auth import TLSOptions
from tests.auth.conftest import TD, Pki


def test_options_with_tls_pickle_copy_and_deep_copy(pki: Pki) -> None:
    tls = pki.issue("orderd")
    given = pki.options("orderd", trust_domain=TD, allowed_peers=(f"spiffe://{TD}/svc/*",))
    for options in (tls, given, meshkit.DialOptions(tls=tls), meshkit.ServeOptions(tls=given)):
        back = pickle.loads(pickle.dumps(options))
        assert back == options
        copied = copy.deepcopy(options)
        assert copied == options
        assert copy.copy(options) == options
        assert isinstance(dataclasses.asdict(options), dict)  # type: ignore[call-overload]
        for o in (back, copied):
            t = o if isinstance(o, TLSOptions) else o.tls
            assert t.spiffe_id == f"spiffe://{TD}/svc/orderd"
            assert type(t.trust_domain) is type(
                (options if isinstance(options, TLSOptions) else options.tls).trust_domain)
            peer = t.peer_verifier().identify({"x509_pem_cert": [tls.cert_file.read_bytes()]})
            assert peer is not None and peer.service == "orderd"
            assert t.channel_credentials() is not None


def test_copies_share_what_was_read_without_reading_the_files(pki: Pki) -> None:
    """A copy or deep copy shares the material read (as the class docstring says), so it
    neither reads the files again nor fails while they are away (a Secret being
    replaced): without ``__copy__``/``__deepcopy__`` both went through ``__reduce__``,
    building the options anew from the files (review of 11b7ac2: no test told them
    apart)."""
    tls = pki.issue("orderd")
    saved = {p: p.read_bytes() for p in (tls.cert_file, tls.key_file)}
    for p in saved:
        p.unlink()
    try:
        for copied in (copy.copy(tls), copy.deepcopy(tls)):
            assert copied == tls and copied.spiffe_id == tls.spiffe_id
            assert copied._initial is tls._initial  # shared, not read again
        assert copy.deepcopy(tls).peer_verifier() is not tls.peer_verifier()
        assert copy.copy(tls).peer_verifier() is tls.peer_verifier()
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
