"""Which issue: a day's daily issue, or an ISO week's weekly edition.

An Edition is what every stage after the digest is keyed by: the issue rendered and published, the
campaign sent (campaigns.edition holds its kind, campaigns.issue_date its key), its outbox folder, its
status and its report. Its kind is also the frequency of the members it goes to
(memberships.frequency): a daily issue reaches the daily members, a weekly edition the weekly ones.

Kept free of the database and the settings, so that parsing `--week` costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# As stored in campaigns.edition and memberships.frequency (db.DAILY, db.WEEKLY; not imported from
# there, which would load SQLAlchemy into every render).
DAILY, WEEKLY = "daily", "weekly"

# ISO 8601's week, extended (2026-W04) or basic (2026W04); the week always has two digits.
_WEEK = re.compile(r"(\d{4})-?W(\d{2})", re.IGNORECASE)


@dataclass(frozen=True)
class Edition:
    kind: str  # DAILY or WEEKLY
    key: str  # "2026-01-23" for a daily issue, "2026-W04" for a weekly edition

    @classmethod
    def daily(cls, day: date) -> Edition:
        return cls(DAILY, day.isoformat())

    @classmethod
    def week_of(cls, day: date) -> Edition:
        """The weekly edition of the ISO week `day` falls in."""
        year, week, _ = day.isocalendar()
        return cls(WEEKLY, f"{year}-W{week:02d}")

    @classmethod
    def parse_week(cls, text: str) -> Edition:
        """The weekly edition of an ISO week written "2026-W04"; ValueError saying what is expected."""
        found = _WEEK.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"expected an ISO week written YYYY-Www, such as 2026-W04; got {text!r}")
        year, week = int(found.group(1)), int(found.group(2))
        try:
            monday = date.fromisocalendar(year, week, 1)
        except ValueError:
            weeks = date(year, 12, 28).isocalendar()[1]  # the 28th of December is in the last week
            raise ValueError(f"{text!r} is not a week: {year} has ISO weeks 01 to {weeks}") from None
        return cls.week_of(monday)

    @classmethod
    def of(cls, issue: Edition | date) -> Edition:
        """`issue` itself, or a day's daily issue."""
        return issue if isinstance(issue, Edition) else cls.daily(issue)

    @property
    def weekly(self) -> bool:
        return self.kind == WEEKLY

    @property
    def days(self) -> list[date]:
        """The day of a daily issue; Monday to Sunday of a weekly edition's week."""
        if not self.weekly:
            return [date.fromisoformat(self.key)]
        year, _, week = self.key.partition("-W")
        return [date.fromisocalendar(int(year), int(week), weekday) for weekday in range(1, 8)]

    def companion(self, weekly_day: int) -> Edition | None:
        """The other issue a list gets the same day: on weekly_day (a date.weekday() number) the
        day's daily issue and the weekly edition of its week go out together; None for a daily issue
        of another day."""
        if self.weekly:
            return Edition.daily(self.days[weekly_day])
        day = self.days[0]
        return Edition.week_of(day) if day.weekday() == weekly_day else None

    @property
    def last_day(self) -> date:
        """The day the issue is dated by in the archive and ordered by among others: a week's Sunday."""
        return self.days[-1]

    @property
    def sort_key(self) -> tuple[date, bool]:
        """Oldest first; a week's edition after the daily issue of its Sunday."""
        return self.last_day, self.weekly

    @property
    def describe(self) -> str:
        """"the 2026-01-23 issue", "the 2026-W04 weekly edition"."""
        return f"the {self.key} weekly edition" if self.weekly else f"the {self.key} issue"

    @property
    def option(self) -> str:
        """The command-line option that names it: "--date 2026-01-23", "--week 2026-W04"."""
        return f"--week {self.key}" if self.weekly else f"--date {self.key}"

    def __str__(self) -> str:
        return self.key
