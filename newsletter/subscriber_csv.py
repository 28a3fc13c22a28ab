"""Subscribers in and out of CSV files: `subscribers import` and `subscribers export`.

An import has to take a million rows in bounded memory, land them in ONE transaction, and never keep
the web server from recording an unsubscribe for longer than its busy timeout. So it runs in steps:

1. Stage. The file is streamed a chunk at a time; each row is validated and written to a TEMP table
   of the import's own connection, in a short transaction per chunk (validation, the slow part, runs
   between transactions). Addresses already subscribed to the list are marked as needing nothing.
2. Dedupe. In SQL, on the staged rows: the first occurrence of an address wins.
3. Merge. One transaction of set-based INSERT … SELECT / UPDATE statements that read every status
   inside it: whoever unsubscribed, bounced or complained meanwhile is not re-subscribed.

Invalid rows, duplicates and skipped addresses are reported by physical line number (header = line 1,
counting blank lines and the lines of quoted multi-line values) and can be written to a rejects CSV.

Spreadsheets run a cell that starts with = + - @ (or a tab or CR) as a formula, so the export and the
rejects file write such a cell with a leading apostrophe ('=HYPERLINK(…) reads as text), as well as
one that starts with an apostrophe; the import drops an apostrophe followed by one of those
characters or another apostrophe. So export → import gives back the same values; a value from
elsewhere that starts that way loses its first apostrophe.
"""

from __future__ import annotations

import csv
import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    cast,
    exists,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

from . import db
from .addresses import email_key, normalise_email
from .errors import SubscriberError
from .files import atomic_file
from .membership import compare_and_set_many, members_query
from .providers import Provider, provider_for
from .providers.headers import plain_text
from .store import subscribers
from .subscribers import check_details, get_list, read_pages

if TYPE_CHECKING:
    from .sections import Delivery
    from .send.parts import SendParts
    from .send.transactional import Outcome

# Rows per staging transaction: large enough to amortise a transaction, small enough that the
# web server never waits long for the lock.
CHUNK = 2000
PROBLEM_LIMIT = 1000

# Outcomes of a staged row besides NULL (valid, to be merged).
INVALID, DUPLICATE, SKIPPED, PRESENT = "invalid", "duplicate", "skipped", "present"

# Bytes that are not UTF-8 come through errors="surrogateescape" as lone surrogates.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

# The first characters that make a spreadsheet cell a formula (OWASP's CSV injection list), and the
# apostrophe that defuses them (escaped the same way, so that it survives a round trip).
_ESCAPED_START = ("=", "+", "-", "@", "\t", "\r", "'")

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Problem:
    line: int
    email: str
    kind: str  # invalid, duplicate or skipped
    reason: str


@dataclass
class ImportReport:
    path: Path
    list_name: str
    rows: int = 0  # data rows read (blank lines are not rows)
    added: int = 0  # new members of the list
    resubscribed: int = 0
    unchanged: int = 0  # already subscribed
    skipped: int = 0  # unsubscribed, bounced or complained: left alone
    invalid: int = 0
    duplicates: int = 0
    new_subscribers: int = 0  # of `added`, those we did not know at all
    merge_seconds: float = 0.0  # how long the final transaction held the database's write lock
    problems: list[Problem] = field(default_factory=list)  # the first PROBLEM_LIMIT, by line
    dry_run: bool = False
    rejects: Path | None = None
    # With require_confirmation: the rows' subscribers now waiting for their confirmation mail.
    to_confirm: list[int] = field(default_factory=list)

    @property
    def problem_count(self) -> int:
        return self.invalid + self.duplicates + self.skipped


@dataclass(frozen=True)
class _Header:
    line: int
    delimiter: str
    columns: list[str]  # trimmed, "" for a column without a name (ignored)
    email: int
    name: int | None
    attributes: list[tuple[int, str]]


# -- reading the file -----------------------------------------------------------------------------


def _open(path: Path) -> TextIO:
    try:
        # utf-8-sig drops the BOM spreadsheet programs write; newline="" is what the csv module needs
        # to read quoted values that span lines.
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as error:
        raise SubscriberError(f"{path}: cannot read the file ({error.strerror})") from None


def _check_text(path: Path, line: int, value: str) -> None:
    # NUL is no character of a text file (and PostgreSQL cannot store it): UTF-16 or a binary file.
    if _UNDECODABLE.search(value) or "\x00" in value:
        raise SubscriberError(f"{path}:{line}: not UTF-8 text (save the file as CSV UTF-8)")


def _read_header(path: Path, handle: TextIO) -> _Header:
    """The first non-blank line, split on a comma or, failing that, a semicolon: whichever shows an
    email column."""
    line = 0
    for raw in handle:
        line += 1
        if raw.strip():
            break
    else:
        raise SubscriberError(f"{path}: the file is empty (expected a header row with an 'email' column)")
    _check_text(path, line, raw)
    for delimiter in ",;":
        columns = [_from_cell(cell) for cell in next(csv.reader([raw], delimiter=delimiter))]
        folded = [column.casefold() for column in columns]
        if "email" in folded:
            break
    else:
        raise SubscriberError(
            f"{path}:{line}: the header row has no 'email' column (it reads {raw.strip()[:200]!r}); "
            "the first row must name the columns, e.g. email,name"
        )
    repeated = sorted({column for column in folded if column and folded.count(column) > 1})
    if repeated:
        raise SubscriberError(f"{path}:{line}: the header row names {', '.join(map(repr, repeated))} twice")
    name = folded.index("name") if "name" in folded else None
    attributes = [
        (index, column)
        for index, column in enumerate(columns)
        if column and folded[index] not in ("email", "name")
    ]
    return _Header(line, delimiter, columns, folded.index("email"), name, attributes)


def _records(path: Path, handle: TextIO, header: _Header) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its fields) for every non-blank record after the header."""
    # strict: a quote opened and never closed is an error here, not the rest of the file read as one
    # value (in one email address's cell).
    reader = csv.reader(handle, delimiter=header.delimiter, strict=True)
    end = header.line
    try:
        for fields in reader:
            start, end = end + 1, header.line + reader.line_num
            if any(value.strip() for value in fields):
                _check_text(path, start, "".join(fields))
                yield start, fields
    except csv.Error as error:
        # Named by the line the broken record starts on: usually a quote opened there and never closed.
        raise SubscriberError(f"{path}:{end + 1}: unreadable CSV ({error}; an unclosed quote?)") from None


def _cell(fields: list[str], index: int | None) -> str:
    # A row may stop early: the columns it leaves out are empty.
    return _from_cell(fields[index]) if index is not None and index < len(fields) else ""


def _from_cell(value: str) -> str:
    """A cell's value as imported: trimmed, without the apostrophe _to_cell put before a formula."""
    value = value.strip()
    return value[1:].strip() if value.startswith("'") and value[1:2] in _ESCAPED_START else value


def _to_cell(value: str) -> str:
    """A value as written for a spreadsheet: never a formula."""
    return "'" + value if value.startswith(_ESCAPED_START) else value


def _spreadsheet_row(values: list[str]) -> list[str]:
    return [_to_cell(value) for value in values]


def _staged_row(header: _Header, line: int, fields: list[str], known: dict[str, Any]) -> dict[str, Any]:
    """The row as staged: valid (line, email, key, name, attributes, outcome) or invalid
    (line, email, raw, outcome, reason)."""
    candidate = _cell(fields, header.email)
    try:
        extra = fields[len(header.columns) :]
        if any(value.strip() for value in extra):
            raise SubscriberError(
                f"{len(fields)} fields but the header has {len(header.columns)} "
                f"(a value with an unquoted {header.delimiter!r}?)"
            )
        if not candidate:
            raise SubscriberError("no email address")
        seen = known.get(candidate.casefold())
        # A stored address was normalised by this same validator: an exact match needs no second look
        # (which makes re-importing a file cheap).
        email = candidate if seen is not None and seen.email == candidate else normalise_email(candidate)
        name = plain_text(_cell(fields, header.name)) or None
        attributes = {column: value for index, column in header.attributes if (value := _cell(fields, index))}
        check_details(name, attributes)
    except SubscriberError as error:
        return {"line": line, "email": candidate, "raw": fields, "outcome": INVALID, "reason": str(error)}
    key = email_key(email)
    seen = known.get(key)
    present = seen is not None and seen.status == db.SUBSCRIBED
    return {
        "line": line,
        "email": email,
        "key": key,
        "name": name,
        "attributes": attributes,
        "outcome": PRESENT if present else None,
    }


# -- the import -----------------------------------------------------------------------------------


def _staging_table() -> Table:
    return Table(
        "import_rows",
        MetaData(),
        Column("line", Integer, primary_key=True, autoincrement=False),
        Column("email", Text, nullable=False),
        Column("key", Text),
        Column("name", Text),
        Column("attributes", JSON),
        Column("raw", JSON),  # an invalid row's fields as read, for the rejects file
        Column("outcome", String(20)),
        Column("reason", Text),
        Column("first_line", Integer),  # a duplicate's first occurrence
        prefixes=["TEMPORARY"],
    )


def import_csv(
    engine: Engine,
    path: Path,
    *,
    list_name: str,
    clock: Callable[[], datetime],
    resubscribe: bool = False,
    require_confirmation: bool = False,
    rejects: Path | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a CSV file of subscribers into a list; see the module docstring.

    The operator vouches for the rows: they are subscribed (sign-ups still unconfirmed too), unless
    `require_confirmation`, which adds new ones unconfirmed and lists in `report.to_confirm` whoever
    of the file waits for a confirmation mail (import_subscribers sends them).
    `resubscribe` re-subscribes addresses that unsubscribed, bounced or complained before the import
    began (never one that said no while it ran). `dry_run` does everything but commit. `progress`
    is called with ("reading", lines read) after each chunk and ("merging", rows read) once inside the
    merge transaction. A file that cannot be read as CSV raises SubscriberError with nothing written.
    """
    if resubscribe and require_confirmation:
        raise SubscriberError(
            "--resubscribe and --require-confirmation do not go together: whoever left confirms by "
            "signing up again"
        )
    report = ImportReport(path, list_name, dry_run=dry_run, rejects=rejects)
    with _open(path) as handle, engine.connect() as conn:
        header = _read_header(path, handle)
        with conn.begin():
            list_id = get_list(conn, list_name).id
        started = clock()
        table = _staging_table()
        with conn.begin():
            table.create(conn)
        try:
            _stage(conn, table, header, _records(path, handle, header), list_id, report, progress)
            with conn.begin():
                _mark_duplicates(conn, table)
            transaction = conn.begin()
            merging = time.monotonic()
            try:
                if progress:
                    progress("merging", report.rows)
                _merge(
                    conn,
                    table,
                    list_id,
                    started=started,
                    now=clock(),
                    resubscribe=resubscribe,
                    require_confirmation=require_confirmation,
                    source=path.name,
                    report=report,
                )
                if dry_run:
                    # The merge's verdicts (skipped rows) go with the rollback: read them first.
                    _count(conn, table, report)
                    _report_problems(conn, table, header, report, paged=False)
                    transaction.rollback()
                else:
                    transaction.commit()
                report.merge_seconds = time.monotonic() - merging
            finally:
                if transaction.is_active:
                    transaction.rollback()
            if not dry_run:
                with conn.begin():
                    _count(conn, table, report)
                _report_problems(conn, table, header, report, paged=True)
        finally:
            with conn.begin():
                table.drop(conn, checkfirst=True)
    return report


@dataclass
class Imported:
    """An import, and the confirmation mails it sent (None: it sent none)."""

    report: ImportReport
    confirmations: list[Outcome] | None = None


def confirmation_provider(delivery: Delivery, *, require_confirmation: bool, dry_run: bool) -> Provider | None:
    """What sends an import's confirmation mails: the configured provider if new rows must confirm
    (none for a dry run). Made before anything is stored, so that missing credentials stop the import
    first."""
    return provider_for(delivery) if require_confirmation and not dry_run else None


def import_subscribers(
    engine: Engine, parts: SendParts, path: Path, *, list_name: str, provider: Provider | None = None,
    resubscribe: bool = False, require_confirmation: bool = False, rejects: Path | None = None,
    dry_run: bool = False, progress: Progress | None = None,
) -> Imported:  # fmt: skip
    """`subscribers import`: import the file (see import_csv), then send a confirmation mail through
    `provider` (see confirmation_provider) to each new row that waits for one; `progress` is then
    called with ("confirming", rows waiting). A dry run sends nothing."""
    report = import_csv(
        engine, path, list_name=list_name, clock=parts.clock, resubscribe=resubscribe,
        require_confirmation=require_confirmation, rejects=rejects, dry_run=dry_run, progress=progress,
    )  # fmt: skip
    if provider is None or dry_run:
        return Imported(report)
    # Imported here: the mails' templates (MJML, premailer) only for an import that sends them.
    from .signup import send_confirmations

    with engine.connect() as conn:
        mailing_list = get_list(conn, list_name)
    if progress:
        progress("confirming", len(report.to_confirm))
    return Imported(report, send_confirmations(engine, parts, mailing_list, report.to_confirm, provider))


def _stage(
    conn: Connection,
    table: Table,
    header: _Header,
    records: Iterator[tuple[int, list[str]]],
    list_id: int,
    report: ImportReport,
    progress: Progress | None,
) -> None:
    s, m = db.subscribers.c, db.memberships.c
    known_query = select(s.email, s.email_key, m.status).select_from(
        db.subscribers.outerjoin(db.memberships, and_(m.subscriber_id == s.id, m.list_id == list_id))
    )
    chunk: list[tuple[int, list[str]]] = []
    last_line = header.line

    def flush() -> None:
        keys = {_cell(fields, header.email).casefold() for _, fields in chunk} - {""}
        with conn.begin():
            known = {
                row.email_key: row for row in conn.execute(known_query.where(s.email_key.in_(list(keys))))
            }
        rows = [_staged_row(header, line, fields, known) for line, fields in chunk]
        valid = [row for row in rows if row["outcome"] != INVALID]
        with conn.begin():
            # Two executemany calls, one per shape of row: every row of one must bind the same columns.
            for batch in (valid, [row for row in rows if row["outcome"] == INVALID]):
                if batch:
                    conn.execute(table.insert(), batch)
        report.rows += len(rows)
        chunk.clear()
        if progress:
            progress("reading", last_line)

    for line, fields in records:
        chunk.append((line, fields))
        last_line = line
        if len(chunk) == CHUNK:
            flush()
    if chunk:
        flush()


def _mark_duplicates(conn: Connection, table: Table) -> None:
    t = table.c
    Index("ix_import_rows_key", t.key).create(conn)
    first = (
        select(t.key, func.min(t.line).label("line"))
        .where(t.key.is_not(None))
        .group_by(t.key)
        .having(func.count() > 1)
        .subquery()
    )
    conn.execute(
        update(table)
        .where(t.key == first.c.key, t.line > first.c.line)
        .values(outcome=DUPLICATE, first_line=first.c.line)
    )


def _merge(
    conn: Connection,
    table: Table,
    list_id: int,
    *,
    started: datetime,
    now: datetime,
    resubscribe: bool,
    require_confirmation: bool,
    source: str,
    report: ImportReport,
) -> None:
    """Land the staged rows; every decision reads the statuses as they are inside this transaction."""
    if conn.dialect.name == "postgresql":
        # What SQLite's BEGIN IMMEDIATE gives: no membership changes between a check and its write.
        # Writers (the web server's unsubscribes) wait for the commit, as they do on SQLite.
        conn.execute(text("LOCK TABLE subscribers, memberships IN SHARE ROW EXCLUSIVE MODE"))
    s, m, t = db.subscribers.c, db.memberships.c, table.c
    pending = t.outcome.is_(None)
    stamp = literal(now, db.TS)
    report.new_subscribers = subscribers.add_selected(
        conn,
        select(t.email, t.key, t.name, t.attributes, stamp)
        .where(pending, ~exists().where(s.email_key == t.key))
        .order_by(t.line),
    )
    staged = db.subscribers.join(table, s.email_key == t.key)
    # Each valid row's subscriber, and where its event says the change came from.
    rows = select(
        s.id.label("subscriber_id"), (literal(f"{source} line ") + cast(t.line, String)).label("detail")
    ).select_from(staged).where(pending)
    subscribe_staged = functools.partial(
        compare_and_set_many, conn, list_id=list_id, rows=rows, status=db.SUBSCRIBED, source="import", now=now
    )

    if resubscribe:
        # Whatever "no" the rules let an import lift, if said before the import began: one said while
        # it ran is the newer word.
        report.resubscribed = subscribe_staged(expected=db.STATUSES, unchanged_since=started)
    elif not require_confirmation:
        report.added = subscribe_staged(expected=[db.UNCONFIRMED])

    # With resubscribe, whoever is still not subscribed said no while the import ran.
    skipped_because = m.status + literal(" during the import") if resubscribe else m.status
    member = and_(m.list_id == list_id, m.subscriber_id == s.id)
    waiting = (db.SUBSCRIBED, db.UNCONFIRMED) if require_confirmation else (db.SUBSCRIBED,)
    report.skipped = conn.execute(
        update(table)
        .where(pending, t.key == s.email_key, member, m.status.not_in(waiting))
        .values(outcome=SKIPPED, reason=skipped_because)
    ).rowcount

    joined = db.UNCONFIRMED if require_confirmation else db.SUBSCRIBED
    report.added += compare_and_set_many(
        conn, list_id=list_id, rows=rows, expected=[None], status=joined, source="import", now=now
    )
    if require_confirmation:
        report.to_confirm = list(
            conn.execute(
                select(s.id).select_from(staged.join(db.memberships, member)).where(pending, m.status == db.UNCONFIRMED).order_by(t.line)
            ).scalars()
        )


def _count(conn: Connection, table: Table, report: ImportReport) -> None:
    t = table.c
    counts: dict[str | None, int] = {
        outcome: number
        for outcome, number in conn.execute(select(t.outcome, func.count()).group_by(t.outcome))
    }
    report.invalid = counts.get(INVALID, 0)
    report.duplicates = counts.get(DUPLICATE, 0)
    merged = counts.get(None, 0) + counts.get(PRESENT, 0)
    report.unchanged = merged - report.added - report.resubscribed


def _report_problems(
    conn: Connection, table: Table, header: _Header, report: ImportReport, *, paged: bool
) -> None:
    """Collect the first problems into the report and, if asked, write them all to the rejects file.

    `paged`: each page in its own transaction (after the merge committed); else inside the caller's.
    """
    rows = _problem_rows(conn, table, conn.begin if paged else nullcontext)
    with _csv_file(report.rejects) if report.rejects else nullcontext() as out:
        writer = csv.writer(out, delimiter=header.delimiter) if out else None
        if writer:
            writer.writerow(_spreadsheet_row(["line", "reason", *header.columns]))
        for row in rows:
            problem = _problem(row)
            if writer:
                fields = _spreadsheet_row([problem.reason, *_original_fields(header, row)])
                writer.writerow([row.line, *fields])
            elif len(report.problems) == PROBLEM_LIMIT:
                break
            if len(report.problems) < PROBLEM_LIMIT:
                report.problems.append(problem)


def _problem_rows(
    conn: Connection, table: Table, transaction: Callable[[], AbstractContextManager[Any]]
) -> Iterator[Any]:
    """The staged rows with a problem, by line, a page per `transaction()` (read_pages takes a fresh
    connection per page, and a temp table lives on one connection only)."""
    t = table.c
    query = select(table).where(t.outcome.in_([INVALID, DUPLICATE, SKIPPED])).order_by(t.line).limit(CHUNK)
    last = 0
    while True:
        with transaction():
            rows = conn.execute(query.where(t.line > last)).all()
        yield from rows
        if len(rows) < CHUNK:
            return
        last = rows[-1].line


def _problem(row: Any) -> Problem:
    if row.outcome == DUPLICATE:
        reason = f"duplicate of line {row.first_line}"
    elif row.outcome == SKIPPED:
        reason = f"skipped: {row.reason}"
    else:
        reason = row.reason
    return Problem(row.line, row.email, row.outcome, reason)


def _original_fields(header: _Header, row: Any) -> list[str]:
    if row.raw is not None:
        return list(row.raw)
    values = {header.email: row.email, **({header.name: row.name or ""} if header.name is not None else {})}
    attributes = row.attributes or {}
    for index, column in header.attributes:
        values[index] = attributes.get(column, "")
    return [values.get(index, "") for index in range(len(header.columns))]


# -- the export -----------------------------------------------------------------------------------


def write_export(engine: Engine, *, list_name: str, out: TextIO, status: str = db.SUBSCRIBED) -> int:
    """Write a list's members with this status as CSV that `import_csv` reads back: email, name,
    then one column per attribute (in the order first met), formulas defused (module docstring).
    Returns the number of rows."""
    with engine.connect() as conn:
        list_id = get_list(conn, list_name).id
    s = db.subscribers.c
    members = members_query(list_id, s.id, s.email, s.name, s.attributes, status=status)
    # Two streaming passes: the first finds the attribute columns, so no row waits in memory.
    columns: dict[str, None] = {}
    for row in read_pages(engine, members.with_only_columns(s.id, s.attributes), s.id):
        columns.update(dict.fromkeys(row.attributes or {}))
    writer = csv.writer(out)
    writer.writerow(_spreadsheet_row(["email", "name", *columns]))
    count = 0
    for row in read_pages(engine, members, s.id):
        attributes = row.attributes or {}
        values = [row.email, row.name or "", *(_text(attributes.get(column)) for column in columns)]
        writer.writerow(_spreadsheet_row(values))
        count += 1
    return count


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def export_csv(engine: Engine, *, list_name: str, path: Path | None, status: str = db.SUBSCRIBED) -> int:
    """write_export to a file (replaced only once complete), or to standard output for path None."""
    if path is None:
        return write_export(engine, list_name=list_name, out=sys.stdout, status=status)
    with _csv_file(path) as out:
        return write_export(engine, list_name=list_name, out=out, status=status)


def _csv_file(path: Path) -> AbstractContextManager[TextIO]:
    """A CSV file written all or nothing, owner-only: it holds people's addresses."""
    return atomic_file(path, "w", private=True, encoding="utf-8", newline="")
