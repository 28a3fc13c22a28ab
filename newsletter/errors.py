"""Every error the tool reports to a user.

    NewsletterError            base: the CLI prints str(error) and exits 1, without a traceback
    ├── ConfigError            a bad setting (names the key and where it came from)
    ├── DigestError            a digest that cannot make an issue (names the file and line)
    ├── RenderError            templates that do not compile
    ├── CheckFailed            pre-send checks found problems (carries them)
    ├── SubscriberError        a bad list name, unknown subscriber, unreadable CSV …
    ├── TokenError             a bad, forged or truncated unsubscribe token
    ├── DatabaseError          the database cannot be reached or stays locked (names it, no password)
    ├── DatabaseCorrupt        the database file is no SQLite database, or a damaged one (names the
    │                          file): not a DatabaseError, since waiting and retrying cannot mend it
    ├── GenerateError          the day's digest could not be written: the source or the model failed,
    │                          or the source has no papers that day (`nothing_today`; exit status 3)
    ├── DigestExists           `generate` would overwrite a digest (an editor's, perhaps) without --force
    ├── NothingToApprove       `approve` for a day whose issue no editor was sent
    ├── NoIssueSent            a report asked about a day, week or list that no issue went to
    ├── RunDateError           `newsletter run --date` in the future (exit status 2)
    ├── RunLocked              another `newsletter run` holds the run lock (exit status 5)
    └── SendError              a send that cannot go on
        ├── MissingAPIKey      no credentials for a real send (the provider's API key)
        ├── ProviderAuthError  the provider refused the credentials: every later batch would fail too
        └── SendInProgress     another process holds the campaign's claim

Messages are written for the person at the terminal and never contain a secret.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Base of every error the tool reports to a user."""


class ConfigError(NewsletterError):
    pass


class DigestError(NewsletterError):
    def __init__(self, message: str, *, path: object = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class RenderError(NewsletterError):
    pass


class CheckFailed(NewsletterError):
    def __init__(self, problems: list) -> None:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} pre-send check(s) failed:\n{lines}")
        self.problems = problems


class SubscriberError(NewsletterError):
    pass


class TokenError(NewsletterError):
    pass


class DatabaseError(NewsletterError):
    pass


class DatabaseCorrupt(NewsletterError):
    pass


class GenerateError(NewsletterError):
    exit_code = 3

    def __init__(self, message: str, *, nothing_today: bool = False) -> None:
        super().__init__(message)
        self.nothing_today = nothing_today


class DigestExists(NewsletterError):
    pass


class NothingToApprove(NewsletterError):
    pass


class NoIssueSent(NewsletterError):
    pass


class RunDateError(NewsletterError):
    pass


class RunLocked(NewsletterError):
    pass


class SendError(NewsletterError):
    pass


class MissingAPIKey(SendError):
    def __init__(self, message: str, *, credential: str) -> None:
        super().__init__(message)
        self.credential = credential  # the variable to set


class ProviderAuthError(SendError):
    pass


class SendInProgress(SendError):
    pass
