"""The ``ecom.v1.UserService`` servicer (grpc.aio) and its session issuing.

Register it with ``user_pb2_grpc.add_UserServiceServicer_to_server(
UserServicer(store), server)``.

Store failures: when the user store cannot be reached every method answers
UNAVAILABLE with :data:`STORE_UNAVAILABLE` (the store logs the cause, once per
outage); any other store failure is INTERNAL with :data:`STORE_FAILED`, logged
here with its cause. Neither message names a host, port, path or exception
class.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog

from examples.ecom import passwords, validation
from examples.ecom.cache import CachedUsers
from examples.ecom.proto import user_pb2, user_pb2_grpc
from examples.ecom.storage import DuplicateEmailError, Store, StoreUnavailable, UserRecord

_log = structlog.get_logger("examples.ecom.users")

_T = TypeVar("_T")

#: The one message for every failed login, so callers cannot tell which emails exist.
BAD_CREDENTIALS = "invalid email or password"

#: How much longer than its stored form a spelling of a valid email or password may be:
#: a character's canonical decomposition (NFD) is at most 4 code points (U+1FAF), so
#: the decomposed spelling of a 254-character email or 1,024-character password that
#: CreateUser accepted composed is at most 4 times as long.
SPELLING_EXPANSION = 4

#: Most password hashings (scrypt: 16 MiB and tens of milliseconds of CPU each) a
#: servicer runs at once; the others wait their turn (a cancelled call leaves the queue).
#: ``asyncio.to_thread`` alone ran as many as its pool has threads, ``min(32, CPUs + 4)``
#: where a container sees the node's CPUs: 32 at once is 512 MiB, past deploy/k8s'
#: 256 MiB limit of userd.
MAX_CONCURRENT_HASHES = 4

#: Failed logins of one email address a process takes within :data:`LOGIN_WINDOW_S`
#: before it refuses further attempts at it (RESOURCE_EXHAUSTED): NIST SP 800-63B 5.2.2
#: asks verifiers to limit failed attempts per account (at most 100), so that a password
#: cannot be guessed online at the pace the service can hash.
MAX_FAILED_LOGINS = 10
#: The window of :data:`MAX_FAILED_LOGINS`, seconds.
LOGIN_WINDOW_S = 300.0
#: Status message of RESOURCE_EXHAUSTED when an email had too many failed logins.
TOO_MANY_FAILED_LOGINS = "too many failed logins for this email; try again later"

#: Status message of UNAVAILABLE when the user store cannot be reached.
STORE_UNAVAILABLE = "user store unavailable"
#: Status message of INTERNAL when the user store fails otherwise.
STORE_FAILED = "user store failed"


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A bearer ``token`` for a user, valid for ``expires_in_s`` seconds."""

    token: str
    expires_in_s: int


#: Issues a session for an authenticated user; swap in a JWT issuer later.
SessionIssuer = Callable[[UserRecord], IssuedSession]


class OpaqueSessionIssuer:
    """Issues random opaque tokens (``secrets.token_urlsafe(32)``), valid ``ttl_s`` seconds.

    The tokens are not recorded anywhere, so nothing can verify them yet: this
    is a placeholder until JWT sessions replace it.
    """

    def __init__(self, ttl_s: int = 3600) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.ttl_s = ttl_s

    def __call__(self, user: UserRecord) -> IssuedSession:
        """Return a fresh session for ``user``."""
        return IssuedSession(secrets.token_urlsafe(32), self.ttl_s)


class LoginThrottle:
    """Failed logins per email address in this process: ``max_failures`` (default
    :data:`MAX_FAILED_LOGINS`) within ``window_s`` seconds (default :data:`LOGIN_WINDOW_S`)
    and the address is refused until the oldest of them is
    older than the window; a successful login clears its count. Attempts in flight
    (:meth:`started`, not yet :meth:`ended`) count too, so a burst of attempts sent at
    once cannot all pass the check before the first of them has failed.

    Keyed by a digest of the email's normalised form (:func:`~examples.ecom.validation.
    normalize_email`), whether or not an account has it, so a refusal tells nothing of
    which emails exist; at most ``max_emails`` addresses are tracked (the least recently
    failed forgotten first), bounding the memory an attacker spraying addresses can take
    (an attempt enters that table only once judged, after its hashing: attempts cancelled
    before it cannot flush an address out cheaply; those in flight are bounded by the
    calls the server runs at once). Each replica counts its own attempts. ``clock``:
    monotonic seconds.
    """

    __slots__ = ("_clock", "_failures", "_in_flight", "_max", "_max_emails", "_window_s")

    def __init__(self, max_failures: int | None = None, window_s: float | None = None, *,
                 max_emails: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # None: the module's MAX_FAILED_LOGINS and LOGIN_WINDOW_S, read now
        max_failures = MAX_FAILED_LOGINS if max_failures is None else max_failures
        window_s = LOGIN_WINDOW_S if window_s is None else window_s
        if max_failures < 1 or not window_s > 0 or max_emails < 1:
            raise ValueError(f"max_failures, window_s and max_emails must be positive, got "
                             f"{max_failures!r}, {window_s!r}, {max_emails!r}")
        self._max = max_failures
        self._window_s = window_s
        self._max_emails = max_emails
        self._clock = clock
        self._failures: OrderedDict[bytes, deque[float]] = OrderedDict()
        self._in_flight: dict[bytes, int] = {}

    @staticmethod
    def _key(email: str) -> bytes:
        normalized = validation.normalize_email(email)
        return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"),
                               digest_size=16).digest()

    def retry_after_s(self, email: str) -> float | None:
        """Seconds until ``email`` may be tried again, or ``None`` when it may now
        (1 when only attempts in flight fill its count: they end within seconds)."""
        key = self._key(email)
        times = self._failures.get(key)
        now = self._clock()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        failed = len(times) if times else 0
        if failed + self._in_flight.get(key, 0) < self._max:
            return None
        if times and failed >= self._max:
            return times[0] + self._window_s - now
        return 1.0

    def started(self, email: str) -> None:
        """An attempt at ``email`` passed the check and is being judged; call
        :meth:`ended` once it is (whatever the outcome), before :meth:`failed` or
        :meth:`succeeded`."""
        key = self._key(email)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def ended(self, email: str) -> None:
        """The attempt :meth:`started` for ``email`` was judged, failed to be (the store
        failed) or was cancelled."""
        key = self._key(email)
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def failed(self, email: str) -> None:
        """Count a failed login of ``email``."""
        key = self._key(email)
        times = self._failures.pop(key, None) or deque(maxlen=self._max)
        times.append(self._clock())
        self._failures[key] = times
        while len(self._failures) > self._max_emails:
            self._failures.popitem(last=False)

    def succeeded(self, email: str) -> None:
        """Forget the failed logins of ``email``."""
        self._failures.pop(self._key(email), None)


def user_message(user: UserRecord) -> user_pb2.User:
    """Convert a stored user to its ``ecom.v1.User`` message (no password hash)."""
    msg = user_pb2.User(id=user.id, email=user.email, name=user.name)
    msg.created_at.FromMilliseconds(user.created_at_ms)
    return msg


class UserServicer(user_pb2_grpc.UserServiceServicer):
    """``ecom.v1.UserService`` on a :class:`~examples.ecom.storage.Store`.

    ``issue_session`` is called with the user on each successful
    Authenticate; it defaults to :class:`OpaqueSessionIssuer`. With ``cache``
    (:func:`examples.ecom.cache.open_user_cache`) GetUser reads through it and
    UpdateUser invalidates the changed user in it; a cache outage only sends GetUser to
    the store. Password hashings run :data:`MAX_CONCURRENT_HASHES` at a time at most.
    Failed logins are counted per email by ``login_throttle`` (default
    :class:`LoginThrottle`: :data:`MAX_FAILED_LOGINS` per :data:`LOGIN_WINDOW_S`).
    """

    def __init__(self, store: Store, *, issue_session: SessionIssuer | None = None,
                 cache: CachedUsers | None = None,
                 login_throttle: LoginThrottle | None = None) -> None:
        self._store = store
        self._throttle = login_throttle or LoginThrottle()
        self._issue_session = issue_session or OpaqueSessionIssuer()
        self._cache = cache
        # per event loop: an asyncio.Semaphore a waiter bound to one loop raises in another
        self._hash_slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    async def _hashing(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` (a :mod:`~examples.ecom.passwords` function) in a worker thread,
        once one of the :data:`MAX_CONCURRENT_HASHES` slots is free. The slot is held
        until the thread ends, also when the call is cancelled meanwhile (the thread
        cannot be stopped: it still takes its memory and CPU)."""
        loop = asyncio.get_running_loop()
        if self._hash_slots is None or self._hash_slots[0] is not loop:
            self._hash_slots = (loop, asyncio.Semaphore(MAX_CONCURRENT_HASHES))
        slots = self._hash_slots[1]
        await slots.acquire()
        try:
            work = loop.run_in_executor(None, fn, *args)
        except BaseException:
            slots.release()
            raise

        def done(f: asyncio.Future[_T]) -> None:
            slots.release()
            if not f.cancelled():
                f.exception()  # retrieved: a cancelled caller no longer awaits it

        work.add_done_callback(done)
        return await asyncio.shield(work)

    @staticmethod
    async def _stored(call: Awaitable[_T], context: grpc.aio.ServicerContext[Any, Any]) -> _T:
        """Await a store call; abort UNAVAILABLE (:data:`STORE_UNAVAILABLE`) if the
        store cannot be reached, INTERNAL (:data:`STORE_FAILED`, cause logged) if it
        fails otherwise. :class:`DuplicateEmailError` passes through to the caller."""
        try:
            return await call
        except DuplicateEmailError:
            raise
        except StoreUnavailable:  # logged by the store, once per outage
            await context.abort(grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE)
        except Exception:
            _log.exception("user store call failed")
            await context.abort(grpc.StatusCode.INTERNAL, STORE_FAILED)

    async def _user_by_email(self, email: str, context: grpc.aio.ServicerContext[Any, Any],
                             *, every_spelling: bool = False) -> UserRecord | None:
        """The user stored under any of ``email``'s spellings
        (:func:`~examples.ecom.validation.email_spellings`: a row stored before emails
        were NFC-normalised may hold a decomposed form), the first found, or None; one
        store lookup per spelling until found (one for an ASCII address), or for every
        spelling with ``every_spelling`` (so the number of lookups does not tell
        whether the user exists). Store failures abort as :meth:`_stored` does."""
        found: UserRecord | None = None
        for spelling in validation.email_spellings(email):
            user = await self._stored(self._store.get_user_by_email(spelling), context)
            found = found or user
            if found is not None and not every_spelling:
                break
        return found

    async def CreateUser(
        self,
        request: user_pb2.CreateUserRequest,
        context: grpc.aio.ServicerContext[user_pb2.CreateUserRequest, user_pb2.User],
    ) -> user_pb2.User:
        """Create a user; INVALID_ARGUMENT for bad fields, ALREADY_EXISTS for a taken email
        (in any of its spellings, see :meth:`_user_by_email`), UNAVAILABLE or INTERNAL for
        store failures (see :meth:`_stored`)."""
        try:
            email = validation.validate_create_user(request.email, request.name, request.password)
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if await self._user_by_email(request.email, context) is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"email {email!r} is taken")
        hashed = await self._hashing(passwords.hash_password, request.password)
        try:
            user = await self._stored(self._store.create_user(email, request.name, hashed), context)
        except DuplicateEmailError:  # lost a race with a concurrent CreateUser
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"email {email!r} is taken")
        return user_message(user)

    async def GetUser(
        self,
        request: user_pb2.GetUserRequest,
        context: grpc.aio.ServicerContext[user_pb2.GetUserRequest, user_pb2.User],
    ) -> user_pb2.User:
        """Return a user by id; INVALID_ARGUMENT for a malformed id, NOT_FOUND if unknown,
        UNAVAILABLE or INTERNAL for store failures (see :meth:`_stored`)."""
        try:
            validation.validate_id("user_id", request.user_id)
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        async def load() -> user_pb2.User | None:
            found = await self._stored(self._store.get_user(request.user_id), context)
            return None if found is None else user_message(found)

        cache = self._cache
        user = await (load() if cache is None else cache.get(request.user_id, load))
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"user {request.user_id} not found")
        return user

    async def UpdateUser(
        self,
        request: user_pb2.UpdateUserRequest,
        context: grpc.aio.ServicerContext[user_pb2.UpdateUserRequest, user_pb2.User],
    ) -> user_pb2.User:
        """Change a user's name and/or email (empty: unchanged) and return the user.

        INVALID_ARGUMENT for a malformed id, a bad field (CreateUser's rules) or neither
        field given; NOT_FOUND for an unknown id; ALREADY_EXISTS when another user has
        the email (in any of its spellings, see :meth:`_user_by_email`); UNAVAILABLE or
        INTERNAL for store failures (see :meth:`_stored`).
        With a cache, the user's entry is invalidated (:meth:`CachedUsers.changed`) once
        the store call has ended, before answering, whatever its outcome: a failed call
        may still have committed (its answer lost), and a spare invalidation costs one
        cache miss.
        """
        try:
            name, email = validation.validate_update_user(
                request.user_id, request.name, request.email)
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # a row stored before emails were normalised may hold another spelling of the
        # new email, which the unique index does not see (none for an ASCII address)
        for spelling in validation.email_spellings(request.email)[1:] if email else ():
            owner = await self._stored(self._store.get_user_by_email(spelling), context)
            if owner is not None and owner.id != request.user_id:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"email {email!r} is taken")
        try:
            user = await self._stored(
                self._store.update_user(request.user_id, name=name, email=email), context)
        except DuplicateEmailError:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"email {email!r} is taken")
        finally:
            if self._cache is not None:
                await self._cache.changed(request.user_id)
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"user {request.user_id} not found")
        return user_message(user)

    async def Authenticate(
        self,
        request: user_pb2.AuthenticateRequest,
        context: grpc.aio.ServicerContext[user_pb2.AuthenticateRequest, user_pb2.Session],
    ) -> user_pb2.Session:
        """Check email and password and issue a session.

        INVALID_ARGUMENT when a field is missing or longer than any spelling of a valid
        value could be (:data:`SPELLING_EXPANSION` times CreateUser's limits: 1,016
        characters for the email, 4,096 for the password); the email is looked up in
        all its spellings (:meth:`_user_by_email`: as many lookups, and one password
        check, whether or not the user exists); otherwise UNAUTHENTICATED with
        :data:`BAD_CREDENTIALS` for an unknown email and for a wrong password alike;
        RESOURCE_EXHAUSTED (:data:`TOO_MANY_FAILED_LOGINS`, ``retry-after`` seconds in the
        trailing metadata) for an email with too many failed logins
        (:class:`LoginThrottle`), known or not, before any lookup or hashing;
        UNAVAILABLE or INTERNAL for store failures (see :meth:`_stored`).
        """
        email, password = request.email, request.password
        v = validation.Violations()
        for field, value, limit in (
            ("email", email, SPELLING_EXPANSION * validation.MAX_EMAIL),
            ("password", password, SPELLING_EXPANSION * passwords.MAX_LENGTH),
        ):
            if not value:
                v.add(field, "required")
            elif len(value) > limit:
                v.add(field, f"must be at most {limit} characters, got {len(value)}")
        try:
            v.raise_if_any()
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        wait_s = self._throttle.retry_after_s(email)
        if wait_s is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_FAILED_LOGINS,
                                (("retry-after", str(max(1, math.ceil(wait_s)))),))
        self._throttle.started(email)  # counts while in flight: a burst passes no further
        try:
            user = await self._user_by_email(email, context, every_spelling=True)
            ok = await self._hashing(
                passwords.verify_or_dummy, password, user.password_hash if user else None
            )
        finally:  # judged, or not (the store failed: aborted; the call cancelled)
            self._throttle.ended(email)
        if user is None or not ok:
            self._throttle.failed(email)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        self._throttle.succeeded(email)
        session = self._issue_session(user)
        return user_pb2.Session(
            token=session.token, user_id=user.id, expires_in_s=session.expires_in_s
        )
