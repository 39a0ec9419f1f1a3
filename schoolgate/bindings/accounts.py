"""Where the sign-in page checks a password: the school's directory, the portal's own accounts,
or the directory first and the portal's accounts after it.

The portal's accounts (``identity.sign_in.portal_accounts: {role: staff}``) are the staff
accounts of the portal (``schoolgate staff add``): a school with no directory the gateway can
reach, or a few IT staff who must be able to sign in when the directory is down. They sign in
with the configured role (the roster, when it knows them, still wins).
"""

from __future__ import annotations

from sqlalchemy.orm import sessionmaker

from schoolgate.bindings.directory import (
    Directory,
    DirectoryError,
    DirectoryUnavailable,
    DirectoryUser,
    WrongPassword,
)
from schoolgate.bindings.names import UnusableName, parse_principal
from schoolgate.portal.auth import authenticate as authenticate_staff

MAX_PASSWORD = 256


class PortalAccounts:
    """The portal's staff accounts as a password check (blocking: the database)."""

    def __init__(self, sessions: sessionmaker, role: str) -> None:
        self.sessions = sessions
        self.role = role

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        try:
            principal = parse_principal(username)
        except UnusableName as exc:
            raise WrongPassword(f"unusable user name {username!r}: {exc}") from None
        if not principal.is_person or not password or len(password) > MAX_PASSWORD:
            raise WrongPassword(f"unusable user name or password for {username!r}")
        with self.sessions() as db:
            row = authenticate_staff(db, principal.name, password)
            if row is None:
                raise WrongPassword(f"no portal account {principal.name!r} with that password")
            name = row.username.lower()
        return DirectoryUser(name, f"portal account {name}", None, (), self.role, "portal")


class Passwords:
    """The directory, then the portal's accounts: the first that knows the password wins.

    A directory that cannot be reached still lets a portal account sign in (the way in for
    IT staff while it is down); when neither signs the person in, the directory's answer is
    the one given (so "the directory cannot be reached" is said, never "wrong password").
    A directory's refusal of an account (disabled, locked, no role) is final.
    """

    def __init__(self, directory: Directory | None, accounts: PortalAccounts | None) -> None:
        if directory is None and accounts is None:
            raise ValueError("nothing to check passwords against")
        self.directory = directory
        self.accounts = accounts

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        first: DirectoryError | None = None
        if self.directory is not None:
            try:
                return self.directory.authenticate(username, password)
            except (WrongPassword, DirectoryUnavailable) as exc:
                if self.accounts is None:
                    raise
                first = exc
        assert self.accounts is not None
        try:
            return self.accounts.authenticate(username, password)
        except WrongPassword:
            if first is not None:
                raise first from None
            raise
