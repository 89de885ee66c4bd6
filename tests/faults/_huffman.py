"""HPACK's Huffman code (RFC 7541 Appendix B), decoding only.

The code is canonical: symbols sorted by (code length, symbol) get consecutive codes, so
the 257 code lengths of Appendix B define it; they are kept here one base-36 digit per
symbol (``0``..``9``, then ``A`` = 10 ... ``U`` = 30), symbols 0..256 (256 is EOS).
"""

from __future__ import annotations

_LENGTHS = (
    "DNSSSSSSSOUSSUSSSSSSSSUSSSSSSSSS6AACD68BAA8B8666555666666678F6CAD67777777777777777"
    "777777878DJDE6F56565666577666567655677777FBEDSKMKKMMMNMNNNNNONOOMNONNNNLMNMNNOMLK"
    "MMNNLNMMOLMNNLLMLNMNNKMMMNMMNQQKJMNMPQQQRRQOPJLQRRQROLLQQSRRRKOKLMLLNMMPPOOQNQRQQR"
    "RRRRSRRRRRQU"
)
_EOS = 256


def _build() -> dict[tuple[int, int], int]:
    lengths = [int(c, 36) for c in _LENGTHS]
    assert len(lengths) == 257
    table: dict[tuple[int, int], int] = {}
    code = -1
    prev = 0
    for sym in sorted(range(257), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        table[(prev, code)] = sym
    return table


_DECODE = _build()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded HPACK string (trailing padding of 1-bits ignored).

    Raises:
        ValueError: not a valid encoding (EOS inside, or a code that does not exist).
    """
    out = bytearray()
    code = 0
    length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            sym = _DECODE.get((length, code))
            if sym is not None:
                if sym == _EOS:
                    raise ValueError("EOS symbol inside a Huffman-coded string")
                out.append(sym)
                code = 0
                length = 0
            elif length > 30:
                raise ValueError("invalid Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise ValueError("bad Huffman padding")
    return bytes(out)
