"""The SQLite store's statements with numbered placeholders (``?1``, ``?2``: the SQL it
shares with PostgreSQL's ``$1``) bind their parameters by number. Bound from a sequence,
Python 3.12 and 3.13 warned ``DeprecationWarning`` at each (873 warnings in one suite run on
3.12: "Binding 1 ('?1') is a named parameter, but you supplied a sequence"), and 3.14 fails
them (``sqlite3.ProgrammingError``): renaming a user and both purges would stop working.
On 3.11 sqlite3 does not warn, so this test fails only where the deprecation exists."""

from __future__ import annotations

import warnings

from examples.ecom.storage import Store


async def test_update_and_purges_bind_numbered_placeholders_by_number(
        sqlite_store: Store) -> None:
    user = await sqlite_store.create_user("ada@example.com", "Ada", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        renamed = await sqlite_store.update_user(user.id, name="Ada L.")
        assert renamed is not None and renamed.name == "Ada L."
        assert (renamed.email, renamed.id) == ("ada@example.com", user.id)
        assert await sqlite_store.purge_sent(2**62, limit=10) == 0
        assert await sqlite_store.purge_processed(2**62, limit=10) == 0
