"""`subscribers import` and `export`: CSV dialects, line numbers, rejects, idempotence, consent, and
unsubscribes that arrive while a big import runs. Real SQLite files throughout."""

from __future__ import annotations

import csv
import re
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from newsletter import db
from newsletter.config import Settings, load_settings
from newsletter.errors import SubscriberError
from newsletter.membership import set_status
from newsletter.subscriber_csv import PROBLEM_LIMIT, export_csv, import_csv
from newsletter.subscribers import create_list, find_subscriber, get_list, subscribe
from testkit.projects import engine_of

from .support import ROOT, run_newsletter

EXAMPLE_LIST = ROOT / "subscribers" / "example.csv"


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = engine_of(settings)
    with engine.begin() as conn:
        create_list(conn, "daily", now=settings.clock())
    return engine


def run_import(engine: Engine, settings: Settings, path: Path, **options):
    return import_csv(
        engine, path, list_name=options.pop("list_name", "daily"), clock=settings.clock, **options
    )


def write(path: Path, content: str, *, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + content.encode("utf-8"))
    return path


def table_rows(engine: Engine, table) -> list[tuple]:
    with engine.begin() as conn:
        return [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns))]


def members(engine: Engine, list_name: str = "daily") -> dict[str, tuple]:
    """email -> (name, attributes, status) for every member of the list."""
    s, m = db.subscribers.c, db.memberships.c
    with engine.begin() as conn:
        list_id = get_list(conn, list_name).id
        rows = conn.execute(
            select(s.email, s.name, s.attributes, m.status)
            .join(db.memberships, m.subscriber_id == s.id)
            .where(m.list_id == list_id)
        ).all()
    return {row.email: (row.name, row.attributes, row.status) for row in rows}


def status_of(engine: Engine, email: str, list_name: str = "daily") -> str | None:
    with engine.begin() as conn:
        subscriber = find_subscriber(conn, email)
        return conn.execute(
            select(db.memberships.c.status).where(
                db.memberships.c.subscriber_id == subscriber.id,
                db.memberships.c.list_id == get_list(conn, list_name).id,
            )
        ).scalar()


def events_of(engine: Engine, email: str) -> list[tuple]:
    with engine.begin() as conn:
        subscriber = find_subscriber(conn, email)
        e = db.events.c
        return [
            tuple(row)
            for row in conn.execute(
                select(e.id, e.previous_status, e.status, e.source, e.detail)
                .where(e.subscriber_id == subscriber.id)
                .order_by(e.id)
            )
        ]


def on_database(settings: Settings) -> dict[str, str | None]:
    """What `newsletter` run as another process needs in its environment to use this test's database."""
    return {"NEWSLETTER_DATABASE_URL": settings.resolved_database_url}


# -- the example list and CSV dialects ---------------------------------------------------------------


def test_the_example_list_imports_cleanly(engine: Engine, settings: Settings) -> None:
    report = run_import(engine, settings, EXAMPLE_LIST)

    assert (report.rows, report.added, report.new_subscribers, report.problem_count) == (20, 20, 20, 0)
    imported = members(engine)
    assert len(imported) == 20
    assert all(email.split("@")[1] in ("example.com", "example.org") for email in imported)
    assert imported["minjun.kim@example.com"] == (
        "김민준",
        {"affiliation": "Seoul National University", "interests": "LLM, agents"},
        "subscribed",
    )
    # A row whose optional columns are empty keeps no empty attributes.
    assert imported["noah.williams@example.org"] == ("Noah Williams", {}, "subscribed")


def test_bom_semicolons_quotes_and_blank_lines_keep_physical_line_numbers(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "excel.csv",
        "\n"  # line 1: blank lines before the header are skipped
        'Email;Name;"Note; with semicolon"\r\n'  # line 2: the header
        " Ann@Example.COM ;Ann;plain\r\n"  # line 3
        "\r\n"  # line 4: blank
        'bob@example.org;"Bob ""the builder""";"two\r\nlines; and a semicolon"\r\n'  # lines 5-6
        ";;\r\n"  # line 7: empty cells only, a blank row
        "not an address;Carl;x\r\n"  # line 8
        'dora@example.com;"Dora\nDee";\r\n'  # lines 9-10
        "eve@example.com;;;\r\n"  # line 11: a trailing empty field beyond the header is harmless
        "frank@example.com;Frank;a;surplus\r\n",  # line 12: a value beyond the header is not
        bom=True,
    )
    report = run_import(engine, settings, source, rejects=tmp_path / "rejects.csv")

    assert report.rows == 6
    imported = members(engine)
    assert set(imported) == {"Ann@example.com", "bob@example.org", "dora@example.com", "eve@example.com"}
    assert imported["Ann@example.com"][:2] == ("Ann", {"Note; with semicolon": "plain"})
    assert imported["bob@example.org"][:2] == (
        'Bob "the builder"',
        {"Note; with semicolon": "two\r\nlines; and a semicolon"},
    )
    assert imported["dora@example.com"][:2] == ("Dora Dee", {})  # a name is one line: no header to break
    assert [(p.line, p.kind) for p in report.problems] == [(8, "invalid"), (12, "invalid")]
    assert "@-sign" in report.problems[0].reason
    assert "4 fields but the header has 3" in report.problems[1].reason

    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        rejected = list(csv.reader(handle, delimiter=";"))
    assert rejected[0] == ["line", "reason", "Email", "Name", "Note; with semicolon"]
    assert [row[0] for row in rejected[1:]] == ["8", "12"]
    assert rejected[1][2:] == ["not an address", "Carl", "x"]
    assert rejected[2][2:] == ["frank@example.com", "Frank", "a", "surplus"]


def test_duplicates_differing_only_in_case_keep_the_first(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "dupes.csv",
        "email,name\nkim@example.com,First\nlee@example.com,Lee\nKIM@EXAMPLE.COM,Second\nKim@example.com,Third\n",
    )
    report = run_import(engine, settings, source, rejects=tmp_path / "rejects.csv")

    assert members(engine) == {
        "kim@example.com": ("First", {}, "subscribed"),
        "lee@example.com": ("Lee", {}, "subscribed"),
    }
    assert (report.added, report.duplicates) == (2, 2)
    assert [(p.line, p.reason) for p in report.problems] == [
        (4, "duplicate of line 2"),
        (5, "duplicate of line 2"),
    ]
    rejected = (tmp_path / "rejects.csv").read_text(encoding="utf-8").splitlines()
    assert rejected[1:] == [
        "4,duplicate of line 2,KIM@example.com,Second",
        "5,duplicate of line 2,Kim@example.com,Third",
    ]


def test_ten_thousand_invalid_rows_are_reported_and_the_valid_ones_land(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    lines = ["email,name"]
    for i in range(10_000):
        lines.append(f"broken{i}.example.com,Broken {i}")
        if i % 1000 == 0:
            lines.append(f"valid{i}@example.com,Valid {i}")
    source = write(tmp_path / "dirty.csv", "\n".join(lines) + "\n")
    report = run_import(engine, settings, source, rejects=tmp_path / "rejects.csv")

    assert (report.invalid, report.added) == (10_000, 10)
    assert len(report.problems) == PROBLEM_LIMIT  # the report keeps the first ones; the file has all
    assert report.problems[0].line == 2 and report.problems[1].line == 4
    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert len(rejected) == 10_000
    assert rejected[-1]["line"] == str(len(lines))
    assert rejected[-1]["email"] == "broken9999.example.com"
    assert all("@-sign" in row["reason"] for row in rejected)
    assert len(members(engine)) == 10


def test_rows_missing_an_address_or_with_a_huge_name_are_invalid(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "odd.csv", f"name,email\nNobody,\n{'x' * 201},long@example.com\nShort,short@example.com\n"
    )
    report = run_import(engine, settings, source)

    assert [(p.line, p.reason) for p in report.problems] == [
        (2, "no email address"),
        (3, "name longer than 200 characters"),
    ]
    assert list(members(engine)) == ["short@example.com"]


# -- files that cannot be imported at all -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name,address\nAnn,ann@example.com\n", r"bad\.csv:1: the header row has no 'email' column"),
        (b"", r"bad\.csv: the file is empty"),
        (b"email,name,Email\n", r"bad\.csv:1: the header row names 'email' twice"),
        (b"email,name\nann@example.com,Ann\nbob@example.com,Bj\xf6rn\n", r"bad\.csv:3: not UTF-8 text"),
        ("email,name\n".encode("utf-16"), r"bad\.csv:1: not UTF-8 text"),
        (b"email,name\nann@example.com,Ann\nbob@example.com,B\x00b\n", r"bad\.csv:3: not UTF-8 text"),
        (
            b'email,name\nann@example.com,"no closing quote\n' + b"x,y\n" * 40_000,
            r"bad\.csv:2: unreadable CSV \(field larger than field limit",
        ),
        (
            b'email,name\nann@example.com,"no closing quote\nbob@example.com,Bob\n',
            r"bad\.csv:2: unreadable CSV \(unexpected end of data; an unclosed quote\?\)",
        ),
        (
            b'email,name\nann@example.com,Ann\n"bob@example.com,Bob\ncy@example.com,"Cy"\n',
            r"bad\.csv:3: unreadable CSV \(',' expected after '\"'; an unclosed quote\?\)",
        ),
    ],
    ids=[
        "no email column",
        "empty",
        "repeated column",
        "latin-1",
        "utf-16",
        "NUL",
        "unclosed quote",
        "unclosed quote, short file",
        "unclosed quote, closed later",
    ],
)
def test_an_unreadable_file_is_one_error_naming_it_and_writes_nothing(
    engine: Engine, settings: Settings, tmp_path: Path, content: bytes, message: str
) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(content)
    before = [table_rows(engine, t) for t in (db.subscribers, db.memberships, db.events)]

    with pytest.raises(SubscriberError, match=message):
        run_import(engine, settings, source, rejects=tmp_path / "rejects.csv")

    assert [table_rows(engine, t) for t in (db.subscribers, db.memberships, db.events)] == before
    assert not (tmp_path / "rejects.csv").exists()


@pytest.mark.slow
def test_the_command_reports_a_bad_header_in_one_line_and_fails(settings: Settings, tmp_path: Path) -> None:
    env = on_database(settings)
    assert run_newsletter("lists", "create", "daily", env=env).returncode == 0
    source = write(tmp_path / "contacts.csv", "name;mail\nAnn;ann@example.com\n")

    result = run_newsletter("subscribers", "import", str(source), "--list", "daily", env=env)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"{source}:1: the header row has no 'email' column" in result.stderr
    assert "Traceback" not in result.stderr
    with engine_of(settings).begin() as conn:
        assert conn.execute(select(func.count()).select_from(db.subscribers)).scalar() == 0


def test_importing_into_a_missing_list_names_the_list(engine: Engine, settings: Settings) -> None:
    with pytest.raises(SubscriberError, match="no list named 'weekly'"):
        run_import(engine, settings, EXAMPLE_LIST, list_name="weekly")


# -- idempotence, consent, dry runs ---------------------------------------------------------------------


def test_importing_the_same_file_twice_changes_nothing(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "list.csv", EXAMPLE_LIST.read_text(encoding="utf-8") + "KIM@example.org,Dup\nnope,\n"
    )
    first = run_import(engine, settings, source)
    tables = (db.subscribers, db.memberships, db.events)
    before = [table_rows(engine, t) for t in tables]

    second = run_import(engine, settings, source)

    assert [table_rows(engine, t) for t in tables] == before
    assert (first.added, second.added, second.unchanged, second.new_subscribers) == (21, 0, 21, 0)
    assert (second.invalid, second.duplicates) == (first.invalid, first.duplicates) == (1, 0)


def test_an_unsubscribed_address_is_skipped_unless_resubscribe(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    run_import(engine, settings, EXAMPLE_LIST)
    with engine.begin() as conn:
        list_id = get_list(conn, "daily").id
        for email, status in (
            ("jiho.park@example.org", "unsubscribed"),
            ("yuna.kang@example.com", "bounced"),
        ):
            set_status(
                conn,
                list_id=list_id,
                subscriber_id=find_subscriber(conn, email).id,
                status=status,
                source="webhook",
                now=settings.clock(),
            )

    report = run_import(engine, settings, EXAMPLE_LIST, rejects=tmp_path / "rejects.csv")

    assert (report.skipped, report.unchanged, report.added) == (2, 18, 0)
    assert [(p.line, p.reason) for p in report.problems] == [
        (4, "skipped: unsubscribed"),
        (7, "skipped: bounced"),
    ]
    assert status_of(engine, "jiho.park@example.org") == "unsubscribed"
    assert "skipped: bounced" in (tmp_path / "rejects.csv").read_text(encoding="utf-8")

    again = run_import(engine, settings, EXAMPLE_LIST, resubscribe=True)

    assert (again.resubscribed, again.skipped) == (2, 0)
    assert status_of(engine, "yuna.kang@example.com") == "subscribed"
    assert events_of(engine, "yuna.kang@example.com")[-1][1:] == (
        "bounced",
        "subscribed",
        "import",
        "example.csv line 7",
    )


def test_a_dry_run_counts_everything_and_writes_nothing(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        done = subscribe(
            conn, list_id=get_list(conn, "daily").id, email="seoyeon.lee@example.com", now=settings.clock()
        )
        set_status(
            conn,
            list_id=1,
            subscriber_id=done.subscriber.id,
            status="complained",
            source="webhook",
            now=settings.clock(),
        )
    tables = (db.subscribers, db.memberships, db.events)
    before = [table_rows(engine, t) for t in tables]

    report = run_import(engine, settings, EXAMPLE_LIST, dry_run=True, rejects=tmp_path / "rejects.csv")

    assert (report.added, report.new_subscribers, report.skipped) == (19, 19, 1)
    assert [(p.line, p.reason) for p in report.problems] == [(3, "skipped: complained")]
    assert (tmp_path / "rejects.csv").exists()
    assert [table_rows(engine, t) for t in tables] == before


# -- unsubscribes arriving while an import runs ----------------------------------------------------


def big_file(path: Path, rows: int, *, first: list[str], last: list[str]) -> Path:
    """`rows` new addresses with `first` at the top and `last` at the bottom (other chunks)."""
    body = [f"reader{i}@example.com,Reader {i}" for i in range(rows)]
    return write(
        path,
        "\n".join(["email,name", *(f"{e},Known" for e in first), *body, *(f"{e},Known" for e in last)])
        + "\n",
    )


@pytest.mark.slow
def test_an_unsubscribe_from_another_process_during_an_import_is_not_overridden(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    early, late, lapsed = "early@example.com", "late@example.com", "lapsed@example.com"
    with engine.begin() as conn:
        for email in (early, late, lapsed):
            subscribe(conn, list_id=1, email=email, now=settings.clock())
        set_status(
            conn,
            list_id=1,
            subscriber_id=find_subscriber(conn, lapsed).id,
            status="unsubscribed",
            source="one_click",
            now=settings.clock(),
        )
    # `early` is read (and seen subscribed) in the first chunk, `late` in the last one.
    source = big_file(tmp_path / "big.csv", 5000, first=[early, lapsed], last=[late])
    outcomes = []

    def progress(phase: str, lines: int) -> None:
        if phase == "reading" and not outcomes:
            # Another process, while the import is under way: both readers click "unsubscribe".
            for email in (early, late):
                outcomes.append(
                    run_newsletter("subscribers", "unsubscribe", "--list", "daily", email, env=on_database(settings))
                )

    report = run_import(engine, settings, source, resubscribe=True, progress=progress)

    assert [result.returncode for result in outcomes] == [0, 0], [result.stderr for result in outcomes]
    assert status_of(engine, early) == status_of(engine, late) == "unsubscribed"
    # --resubscribe brings back who said no before the import, never who said no during it.
    assert status_of(engine, lapsed) == "subscribed"
    assert report.resubscribed == 1 and report.added == 5000
    assert [(p.line, p.reason) for p in report.problems] == [
        (5004, "skipped: unsubscribed during the import")
    ]
    assert [event[1:4] for event in events_of(engine, early)] == [
        (None, "subscribed", "command"),
        ("subscribed", "unsubscribed", "command"),
    ]


def test_an_unsubscribe_during_the_merge_waits_for_it_and_lands_after(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    reader = "jiho.park@example.org"
    run_import(engine, settings, EXAMPLE_LIST)
    with engine.begin() as conn:
        subscriber_id = find_subscriber(conn, reader).id
        set_status(
            conn,
            list_id=1,
            subscriber_id=subscriber_id,
            status="unsubscribed",
            source="command",
            now=settings.clock(),
        )
    source = big_file(tmp_path / "big.csv", 3000, first=[reader], last=[])
    started, errors = threading.Event(), []

    def one_click() -> None:
        # What the web server does on a one-click unsubscribe: its own connection, its own transaction.
        started.set()
        try:
            with engine_of(settings).begin() as conn:
                set_status(
                    conn,
                    list_id=1,
                    subscriber_id=subscriber_id,
                    status="unsubscribed",
                    source="one_click",
                    now=settings.clock(),
                )
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    clicker = threading.Thread(target=one_click)

    def progress(phase: str, lines: int) -> None:
        if phase == "merging":  # the import now holds the write lock
            clicker.start()
            started.wait()

    report = run_import(engine, settings, source, resubscribe=True, progress=progress)
    clicker.join(timeout=120)

    assert not clicker.is_alive() and errors == []
    assert report.resubscribed == 1  # the import re-subscribed them (they had said no before it began)…
    history = events_of(engine, reader)
    assert [event[2:4] for event in history[-2:]] == [("subscribed", "import"), ("unsubscribed", "one_click")]
    # …and the click, which waited for the import's transaction instead of failing, came after it.
    assert status_of(engine, reader) == "unsubscribed"


# -- export -------------------------------------------------------------------------------------------


def test_an_export_round_trips_through_import(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    run_import(engine, settings, EXAMPLE_LIST)
    with engine.begin() as conn:
        subscribe(
            conn,
            list_id=1,
            email="quote@example.com",
            name='Quo"te, Esq.',
            attributes={"note": "line\nbreak"},
            now=settings.clock(),
        )
        set_status(
            conn,
            list_id=1,
            subscriber_id=find_subscriber(conn, "liam.obrien@example.org").id,
            status="unsubscribed",
            source="command",
            now=settings.clock(),
        )
    exported = tmp_path / "out" / "daily.csv"
    # Into a second, empty database: everything must come from the file.
    elsewhere = load_settings(database_url=f"sqlite:///{tmp_path / 'elsewhere.db'}")
    other = engine_of(elsewhere)
    with other.begin() as conn:
        create_list(conn, "daily", now=elsewhere.clock())

    count = export_csv(engine, list_name="daily", path=exported)
    report = run_import(other, elsewhere, exported)

    assert count == report.added == report.new_subscribers == 20  # 21 members, one unsubscribed: not exported
    original = members(engine)
    assert original.pop("liam.obrien@example.org")[2] == "unsubscribed"
    assert members(other) == original
    assert exported.read_text(encoding="utf-8").splitlines()[0] == "email,name,affiliation,interests,note"
    again = tmp_path / "again.csv"
    export_csv(other, list_name="daily", path=again)
    assert again.read_bytes() == exported.read_bytes()
    assert oct(exported.stat().st_mode & 0o777) == "0o600"  # it holds people's addresses


@pytest.mark.slow
def test_the_import_and_export_commands(settings: Settings, tmp_path: Path) -> None:
    def newsletter(*args: str) -> subprocess.CompletedProcess[str]:
        return run_newsletter(*args, env=on_database(settings))

    assert newsletter("lists", "create", "daily-papers", "--if-missing").returncode == 0
    source = write(tmp_path / "in.csv", EXAMPLE_LIST.read_text(encoding="utf-8") + "broken,Broken\n")

    result = newsletter("subscribers", "import", str(source), "--rejects", str(tmp_path / "rej.csv"))

    # The valid rows landed, but bad input fails the command (status 2: the import did happen).
    assert result.returncode == 2, result.stderr
    assert re.search(r"added +20 +20 new subscriber", result.stdout)
    assert f"{source}:22: broken: invalid email address 'broken'" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        "error: 1 invalid row(s) not imported (the valid rows were); exit status 2"
    )
    # Duplicates and people who left are no error; importing the same file again still fails on its bad row.
    clean = write(
        tmp_path / "clean.csv", EXAMPLE_LIST.read_text(encoding="utf-8") + "MINJUN.KIM@example.com,Dup\n"
    )
    assert newsletter("subscribers", "import", str(clean)).returncode == 0
    again = newsletter("subscribers", "import", str(source), "--dry-run", "--json")
    assert again.returncode == 2 and "a dry run: nothing was written" in again.stderr
    assert (tmp_path / "rej.csv").read_text(encoding="utf-8").count("\n") == 2

    exported = newsletter("subscribers", "export")
    assert exported.returncode == 0, exported.stderr
    assert (
        exported.stdout.splitlines()[1]
        == 'minjun.kim@example.com,김민준,Seoul National University,"LLM, agents"'
    )
    assert len(exported.stdout.splitlines()) == 21


def test_an_export_never_hands_a_spreadsheet_a_formula(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    formulas = {
        "=HYPERLINK(\"https://evil.example\",\"click\")": "plain",
        "+1+2": "@SUM(A1)",
        "-3": "\tleading tab",
        "'=kept as typed": "'plain apostrophe",
    }
    with engine.begin() as conn:
        for n, (name, attribute) in enumerate(formulas.items()):
            subscribe(
                conn,
                list_id=1,
                email=f"formula{n}@example.com",
                name=name,
                attributes={"=cmd|' /C calc'!A0": attribute},
                now=settings.clock(),
            )
    exported = tmp_path / "formulas.csv"
    export_csv(engine, list_name="daily", path=exported)

    with exported.open(encoding="utf-8", newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=HYPERLINK(\"https://evil.example\",\"click\")" in cells and "'@SUM(A1)" in cells
    assert "'=cmd|' /C calc'!A0" in cells  # the header too
    assert "''=kept as typed" in cells and "''plain apostrophe" in cells

    # Back in through import, every value is as it was (leading whitespace aside: import trims it).
    elsewhere = load_settings(database_url=f"sqlite:///{tmp_path / 'elsewhere.db'}")
    other = engine_of(elsewhere)
    with other.begin() as conn:
        create_list(conn, "daily", now=elsewhere.clock())
    assert run_import(other, elsewhere, exported).added == 4
    assert members(other) == {
        email: (name, {key: value.strip() for key, value in attributes.items()}, status)
        for email, (name, attributes, status) in members(engine).items()
    }


def test_an_import_that_mails_nothing_needs_no_signing_key(tmp_path: Path) -> None:
    # The key signs the links of the mails an import may send; one that sends none never reads it.
    (tmp_path / "subscribers").mkdir()
    assert run_newsletter("lists", "create", "daily", cwd=tmp_path).returncode == 0
    (tmp_path / "subscribers" / "secret.key").unlink()
    imported = run_newsletter("subscribers", "import", str(EXAMPLE_LIST), "--list", "daily", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    engine = engine_of(load_settings(config_dir=tmp_path))
    with engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(db.memberships)).scalar_one() > 0
