"""Request validation for the e-commerce servicers.

Checks collect every problem of a request as ``(field path, message)`` pairs and
raise one :class:`InvalidArgument`, whose ``str()`` is the status message the
servicers send with ``INVALID_ARGUMENT``, e.g.
``"items[1].quantity: must be >= 1, got -2; currency: required"`` (bounded: past
:data:`MAX_MESSAGE_BYTES` the rest is counted, ``"and N more violations"``).
Messages never echo passwords, and quote other values only when short.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from examples.ecom import passwords

MAX_EMAIL = 254
MAX_EMAIL_LOCAL = 64
MAX_NAME = 200
MAX_SKU = 64
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE_MINOR = 10**12  # with the other limits a total stays far below 2**63
#: The largest total an order can have (100 items of 10,000 units at 10^12): 10^18.
MAX_ORDER_TOTAL_MINOR = MAX_ITEMS * MAX_QUANTITY * MAX_UNIT_PRICE_MINOR
MAX_IDEMPOTENCY_KEY = 128
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE_TOKEN = 512

#: ISO-4217 codes accepted for orders (a small allow-list of real currencies).
CURRENCIES = frozenset(
    {"USD", "EUR", "GBP", "JPY", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "CAD", "AUD", "NZD"}
)

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")
#: Unicode's control characters (General Category Cc): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Bidirectional embedding, override and isolate controls (U+202A..U+202E,
#: U+2066..U+2069): they make text display in another order than it is stored.
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")


#: Most bytes of an INVALID_ARGUMENT status message as gRPC sends it (``grpc-message``,
#: percent-encoded: 3 bytes for each UTF-8 byte outside printable ASCII, and ``%``). A
#: client refuses trailers past 8 KiB some of the time and past 16 KiB always, and then
#: reports RESOURCE_EXHAUSTED ("received metadata size exceeds ... limit") instead.
MAX_MESSAGE_BYTES = 2048


def _encoded_len(text: str) -> int:
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3
               for b in text.encode("utf-8", "surrogatepass"))


class InvalidArgument(Exception):
    """A request failed validation; ``violations`` lists ``(field, message)`` pairs.

    ``str()`` joins them with ``"; "`` as long as the text stays within
    :data:`MAX_MESSAGE_BYTES` once gRPC percent-encodes it, then ends with
    ``"and N more violations"`` (a PlaceOrder of 100 bad items has 300); ``violations``
    keeps them all."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        parts: list[str] = []
        size = 0
        for i, (field, msg) in enumerate(self.violations):
            part = f"{field}: {msg}"
            size += _encoded_len(part) + (2 if parts else 0)
            if parts and size > MAX_MESSAGE_BYTES - 40:  # room for the tail
                parts.append(f"and {len(self.violations) - i} more violations")
                break
            parts.append(part)
        super().__init__("; ".join(parts))


class Violations:
    """Collects ``(field, message)`` pairs; :meth:`raise_if_any` raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        """Record that ``field`` is wrong, saying why in ``message``."""
        self.items.append((field, message))

    def raise_if_any(self) -> None:
        """Raise :class:`InvalidArgument` if anything was recorded."""
        if self.items:
            raise InvalidArgument(self.items)


def _shown(value: str, limit: int = 40) -> str:
    """Quote a user-supplied value for a message, shortened if long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _text(v: Violations, field: str, value: str, max_len: int) -> bool:
    """Check a required text field: non-empty, at most ``max_len`` characters."""
    if not value:
        v.add(field, "required")
        return False
    if len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters, got {len(value)}")
        return False
    return True


def check_id(v: Violations, field: str, value: str) -> None:
    """Check that ``value`` is a canonical (lower-case, hyphenated) UUID string."""
    if not _text(v, field, value, 36):
        return
    try:
        ok = str(uuid.UUID(value)) == value
    except ValueError:
        ok = False
    if not ok:
        v.add(field, f"must be a UUID, got {_shown(value)}")


def validate_id(field: str, value: str) -> None:
    """Raise :class:`InvalidArgument` unless ``value`` is a canonical UUID string."""
    v = Violations()
    check_id(v, field, value)
    v.raise_if_any()


def normalize_email(email: str) -> str:
    """Return the canonical form under which an email is stored and looked up: Unicode
    NFC, lower-cased, NFC again (lower-casing can decompose, e.g. U+0130 becomes
    ``i`` + U+0307). So a composed ``é`` (U+00E9) and a decomposed ``e`` + U+0301,
    which look the same and are the same address, are one account."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", email).lower())


def email_spellings(email: str) -> tuple[str, ...]:
    """The spellings under which the address ``email`` (as a client sent it) may be
    stored, to look it up by: its :func:`normalize_email` form first, then, for rows
    stored before emails were normalised (only lower-cased), ``email.lower()`` and the
    decomposed (NFD) form of the normalised one; without repeats, so an address that
    is the same in every form (ASCII, for one) has one spelling."""
    normalized = normalize_email(email)
    spellings = [normalized]
    for legacy in (email.lower(), unicodedata.normalize("NFD", normalized)):
        if legacy not in spellings:
            spellings.append(legacy)
    return tuple(spellings)


#: The format characters (category Cf) an email may hold: ZERO WIDTH NON-JOINER and
#: JOINER, which some scripts need (IDNA allows them in context).
_EMAIL_JOINERS = frozenset("\u200c\u200d")


def _invisible_in_email(email: str) -> bool:
    """Whether ``email`` holds a format character (Cf) other than the joiners: with a
    zero-width space, soft hyphen, BOM, bidi mark or tag it would display exactly as
    another address."""
    return any(unicodedata.category(c) == "Cf" and c not in _EMAIL_JOINERS
               for c in email if not c.isascii())


def check_email(v: Violations, field: str, email: str) -> None:
    """Check an email address: required, at most 254 characters, ``local@domain.tld``,
    no control characters, no invisible format characters (category Cf: zero-width
    space, soft hyphen, BOM, bidirectional marks, overrides and isolates, tags; ZWJ
    and ZWNJ are allowed). Pass the :func:`normalize_email` form, so that the limits
    hold for what is stored."""
    if not _text(v, field, email, MAX_EMAIL):
        return
    if not _EMAIL.fullmatch(email) or _CONTROL.search(email) or _invisible_in_email(email):
        v.add(field, f"must be an email address like name@example.com, got {_shown(email)}")
    elif len(email.split("@", 1)[0]) > MAX_EMAIL_LOCAL:
        v.add(field, f"the part before '@' must be at most {MAX_EMAIL_LOCAL} characters")


#: Characters that draw nothing though Unicode does not class them as format (Cf) or
#: space: the Hangul fillers (Lo), the blank braille pattern (So), and the default
#: ignorable marks (Mn): combining grapheme joiner, Khmer inherent vowels, Mongolian
#: free variation selectors, variation selectors 1..256.
_BLANK_NON_FORMAT = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164"
    "\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def _visible(name: str) -> bool:
    """Whether ``name`` has a character that is neither whitespace, an invisible format
    character (Unicode category Cf: zero-width space, word joiner, BOM, ...) nor one of
    the other characters that draw nothing (Hangul fillers, ..., see
    :data:`_BLANK_NON_FORMAT`)."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf"
               and not _BLANK_NON_FORMAT.match(c) for c in name)


def check_name(v: Violations, field: str, name: str) -> None:
    """Check a display name: at most 200 characters, not blank (some character other
    than whitespace, invisible format characters, category Cf, and the letters and
    marks that draw nothing, such as the Hangul filler U+3164), no control characters
    (Unicode category Cc: U+0000..U+001F, U+007F..U+009F), no bidirectional embedding,
    override or isolate controls (U+202A..U+202E, U+2066..U+2069). Zero-width joiners
    and right-to-left text are fine."""
    if not _text(v, field, name, MAX_NAME):
        return
    if not _visible(name):
        v.add(field, "must not be blank")
    elif _CONTROL.search(name):
        v.add(field, "must not contain control characters")
    elif _BIDI_CONTROL.search(name):
        v.add(field, "must not contain bidirectional controls (U+202A..U+202E, U+2066..U+2069)")


def check_password(v: Violations, field: str, password: str) -> None:
    """Check a new password's length: 8..1024 characters, at least 8 of them also in
    the form it is hashed in (:func:`~examples.ecom.passwords.normalize_password`,
    NFKC: ``e`` + U+0301 four times is 8 characters sent, but the 4-character password
    ``éééé``); never echoes it."""
    if not password:
        v.add(field, "required")
    elif not passwords.MIN_LENGTH <= len(password) <= passwords.MAX_LENGTH:
        v.add(
            field,
            f"must be {passwords.MIN_LENGTH} to {passwords.MAX_LENGTH} characters,"
            f" got {len(password)}",
        )
    elif (hashed := len(passwords.normalize_password(password))) < passwords.MIN_LENGTH:
        v.add(
            field,
            f"must be {passwords.MIN_LENGTH} to {passwords.MAX_LENGTH} characters,"
            f" got {hashed} once Unicode-normalised (NFKC)",
        )


def validate_create_user(email: str, name: str, password: str) -> str:
    """Validate a CreateUser request; return the normalised email
    (:func:`normalize_email`, which is what the email checks apply to).

    Raises :class:`InvalidArgument` listing every bad field.
    """
    email = normalize_email(email)
    v = Violations()
    check_email(v, "email", email)
    check_name(v, "name", name)
    check_password(v, "password", password)
    v.raise_if_any()
    return email


def validate_update_user(user_id: str, name: str, email: str) -> tuple[str | None, str | None]:
    """Validate an UpdateUser request; return ``(name, normalised email)``, ``None`` for
    a field left empty (unchanged).

    The id must be a UUID; a non-empty name or email must pass the CreateUser checks
    (the email's in its :func:`normalize_email` form); at least one of them must be
    given. Raises :class:`InvalidArgument` listing every bad field.
    """
    email = normalize_email(email)
    v = Violations()
    check_id(v, "user_id", user_id)
    if name:
        check_name(v, "name", name)
    if email:
        check_email(v, "email", email)
    if not name and not email:
        v.add("name, email", "at least one is required (empty means unchanged)")
    v.raise_if_any()
    return name or None, email or None


class ItemLike(Protocol):
    """Anything shaped like an ``ecom.v1.OrderItem``."""

    @property
    def sku(self) -> str: ...

    @property
    def quantity(self) -> int: ...

    @property
    def unit_price_minor(self) -> int: ...


def check_item(v: Violations, field: str, item: ItemLike) -> None:
    """Check one order item: SKU, quantity 1..10000, unit price 0..10^12 minor units."""
    if _text(v, f"{field}.sku", item.sku, MAX_SKU) and not _SKU.fullmatch(item.sku):
        v.add(f"{field}.sku", f"must match [A-Za-z0-9][A-Za-z0-9._-]*, got {_shown(item.sku)}")
    if item.quantity < 1:
        v.add(f"{field}.quantity", f"must be >= 1, got {item.quantity}")
    elif item.quantity > MAX_QUANTITY:
        v.add(f"{field}.quantity", f"must be <= {MAX_QUANTITY}, got {item.quantity}")
    if item.unit_price_minor < 0:
        v.add(f"{field}.unit_price_minor", f"must be >= 0, got {item.unit_price_minor}")
    elif item.unit_price_minor > MAX_UNIT_PRICE_MINOR:
        v.add(
            f"{field}.unit_price_minor",
            f"must be <= {MAX_UNIT_PRICE_MINOR}, got {item.unit_price_minor}",
        )


def check_currency(v: Violations, field: str, currency: str) -> None:
    """Check that ``currency`` is an allowed ISO-4217 code (see :data:`CURRENCIES`)."""
    if _text(v, field, currency, 3) and currency not in CURRENCIES:
        v.add(
            field,
            f"unsupported currency {_shown(currency)}; use one of {', '.join(sorted(CURRENCIES))}",
        )


def check_idempotency_key(v: Violations, field: str, key: str) -> None:
    """Check an optional idempotency key: at most 128 printable ASCII characters, no spaces."""
    if not key:
        return
    if len(key) > MAX_IDEMPOTENCY_KEY:
        v.add(field, f"must be at most {MAX_IDEMPOTENCY_KEY} characters, got {len(key)}")
    elif not _IDEMPOTENCY_KEY.fullmatch(key):
        v.add(field, "must be printable ASCII without spaces")


def validate_place_order(
    user_id: str,
    items: Sequence[ItemLike],
    currency: str,
    idempotency_key: str,
    *,
    key_field: str = "idempotency_key",
) -> None:
    """Validate a PlaceOrder request: user id, 1..100 items, currency, optional key.

    ``key_field`` names where the key came from in messages (the request field
    or the ``idempotency-key`` metadata). Raises :class:`InvalidArgument`.
    """
    v = Violations()
    check_id(v, "user_id", user_id)
    if not items:
        v.add("items", "must have at least 1 item")
    elif len(items) > MAX_ITEMS:
        v.add("items", f"must have at most {MAX_ITEMS} items, got {len(items)}")
    else:
        for i, item in enumerate(items):
            check_item(v, f"items[{i}]", item)
    check_currency(v, "currency", currency)
    check_idempotency_key(v, key_field, idempotency_key)
    v.raise_if_any()


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated ListOrders page: ``limit`` orders older than ``before_seq`` (None: newest)."""

    limit: int
    before_seq: int | None


def encode_page_token(user_id: str, before_seq: int) -> str:
    """Return the opaque token for the page of ``user_id``'s orders before ``before_seq``."""
    raw = json.dumps({"u": user_id, "s": before_seq}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_page_token(token: str) -> tuple[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        user_id, seq = data["u"], data["s"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        return None
    if not isinstance(user_id, str) or type(seq) is not int or not 0 < seq < 2**63:
        return None
    return user_id, seq


def validate_list_orders(user_id: str, page_size: int, page_token: str) -> PageRequest:
    """Validate a ListOrders request (page_size 0 means 20; 1..100 otherwise).

    Raises :class:`InvalidArgument` for a bad user id, page size, or a page
    token that is malformed or was issued for another user.
    """
    v = Violations()
    check_id(v, "user_id", user_id)
    limit = page_size or DEFAULT_PAGE_SIZE
    if not 1 <= limit <= MAX_PAGE_SIZE:
        v.add("page_size", f"must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    before_seq = None
    if page_token:
        decoded = _decode_page_token(page_token) if len(page_token) <= MAX_PAGE_TOKEN else None
        if decoded is None:
            v.add("page_token", "malformed; pass back a next_page_token unchanged")
        elif decoded[0] != user_id:
            v.add("page_token", "was issued for a different user_id")
        else:
            before_seq = decoded[1]
    v.raise_if_any()
    return PageRequest(limit, before_seq)
