"""What is switched off in a school's setup, said plainly: the gateway logs it at start,
``schoolgate check-config`` prints it, and the console shows it.

* no mail relay and no webhook: access requests, escalations, bans and safeguarding alerts
  notify nobody (they wait in the portal and the decision log);
* a locked category with no entries: the IWF and CTIRU lists are not subscribed;
* no staff account yet (or none for IT Support): nobody can sign in to the portal, or nobody
  deals with pupils' access requests.

Pure: the policy and what the caller read from the database (the roles of the active staff
accounts, or None when there is no database yet).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from schoolgate.core import words

HANDLERS = ("it_support", "network_manager")


@dataclass(frozen=True)
class SwitchedOff:
    key: str  # stable: "notifications", "locked:<category>", "staff", "it_support"
    what: str  # what does not happen, for people
    fix: str  # what to do about it

    def __str__(self) -> str:
        return f"{self.what} {self.fix}"


def _notifications_configured(policy: Any) -> bool:
    notifications = policy.settings.notifications
    return bool(notifications.smtp or notifications.webhook)


def _empty_locked(policy: Any) -> list[str]:
    locked = [name for name, cat in policy.categories.items() if cat.locked]
    if not locked:
        return []
    matcher = getattr(policy, "locked_matcher", None)
    stats = matcher.stats() if matcher is not None else {}
    return [name for name in locked if not stats.get(name)]


def switched_off(policy: Any, *, staff_roles: Collection[str] | None) -> list[SwitchedOff]:
    """Everything switched off. ``staff_roles``: the roles of the active staff accounts (one
    entry per role held by anyone), or None when there is no database yet."""
    found: list[SwitchedOff] = []
    if not _notifications_configured(policy):
        found.append(
            SwitchedOff(
                "notifications",
                "No mail relay or webhook is set up, so access requests, escalations to SLT, "
                "bans and safeguarding alerts notify nobody: they wait in the portal and the "
                "decision log until someone looks.",
                "Set notifications.smtp (the school's mail relay) or notifications.webhook "
                "in the config.",
            )
        )
    for name in _empty_locked(policy):
        label = words.category_words(name)
        found.append(
            SwitchedOff(
                f"locked:{name}",
                f"The locked category {label} has no entries, so it blocks nothing.",
                "Subscribe its lists (the IWF and CTIRU lists for illegal content: see "
                "docs/lists.md) and name them in categories."
                f"{name}.lists.",
            )
        )
    if staff_roles is None or not staff_roles:
        yet = " (there is no database yet: the gateway makes it when it first starts)"
        found.append(
            SwitchedOff(
                "staff",
                "There is no staff account yet, so nobody can sign in to the portal or the "
                "console to answer access requests" + (yet if staff_roles is None else "") + ".",
                "Make one: schoolgate staff add NAME --role network_manager",
            )
        )
    elif not any(role in staff_roles for role in HANDLERS):
        found.append(
            SwitchedOff(
                "it_support",
                "No staff account has the it_support or network_manager role, so nobody sees "
                "pupils' access requests and content reports in the portal.",
                "Give someone the role: schoolgate staff add NAME --role it_support",
            )
        )
    return found


__all__ = ["SwitchedOff", "switched_off"]
