"""`newsletter doctor`: in a project `init` made, ✗ with the fix on an http base_url and a key file
others can read, ✓ once fixed, and every check ✓ (exit 0) behind a TLS reverse proxy; each
provider's credentials tried against the fakes by a call that sends nothing; the digest's source
and model; --json."""

from __future__ import annotations

import getpass
import json
import shutil
import sqlite3
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from newsletter import db
from testkit.fake_huggingface import FakeHuggingFace, make_papers
from testkit.fake_openai import FakeOpenAI
from testkit.fake_postmark import FakePostmark
from testkit.fake_sendgrid import FakeSendGrid
from testkit.fake_smtp import FakeSMTP
from testkit.loopback import reply
from testkit.projects import API_KEY, webhook_key
from testkit.servers import free_port

from .support import EXAMPLE_DIGEST, run_newsletter, serving_newsletter
from .providers.test_smtp import certificate  # noqa: F401 (a fixture: a certificate SSL_CERT_FILE trusts)

# The day the checks look at (2026-01-23 in Asia/Seoul), and that day's digest.
NOW = {"NEWSLETTER_NOW": "2026-01-23T08:00:00+09:00"}
PASSWORD = "smtp-password-never-printed"


def _doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, list[str]]]:
    """doctor's exit status and its lines by check: the check's line, then its fix if any."""
    result = run_newsletter("doctor", *args, env={**NOW, **(env or {})})
    assert result.stderr == ""
    checks: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("  fix: "):
            checks[list(checks)[-1]].append(line)
        else:  # "✓ name: detail"
            checks[line.split(" ", 1)[1].split(":", 1)[0]] = [line]
    return result.returncode, checks


def _init(folder: Path, base_url: str) -> Path:
    result = run_newsletter("init", "--yes", "--base-url", base_url)
    assert result.returncode == 0, result.stderr
    return folder / "subscribers" / "secret.key"


def test_doctor_flags_an_http_base_url_and_a_readable_key_until_they_are_fixed(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    key = _init(tmp_path, f"http://{closed}")
    key.chmod(0o644)

    status, checks = _doctor()
    assert status == 1
    assert checks["base_url"] == [
        f"✗ base_url: http://{closed} is not https: every link in an email is made from it, and mail clients "
        "send one-click unsubscribes only to https URLs",
        "  fix: set base_url to the public https address the reverse proxy serves (e.g. https://news.example.com)",
    ]
    assert checks["secret key"] == [
        f"✗ secret key: {key} has mode 644: other users may read the key that signs every unsubscribe link",
        f"  fix: chmod 600 {key}",
    ]
    assert checks["database"] == [
        f"✓ database: sqlite:///{tmp_path}/subscribers/newsletter.db: reachable, schema up to date "
        f"(version {len(db.MIGRATIONS)})"
    ]
    assert checks["provider"] == [
        "✗ provider: sendgrid: SENDGRID_API_KEY is not set",
        "  fix: set SENDGRID_API_KEY in the environment every command runs with (/etc/newsletter/env), never in newsletter.toml",
    ]
    assert checks["proxy"] == [f"– proxy: not checked: http://{closed} could not be reached (ConnectError)"]
    assert checks["source"] == ['– source: not checked: digests are written by hand (source = "none")']
    assert checks["digest"] == [
        f"✗ digest: {tmp_path}/digests/2026-01-23.md is missing: today's newsletter run would stop with exit status 3",
        '  fix: write it before the run, or set source = "huggingface" to have the run generate it',
    ]

    config = tmp_path / "newsletter.toml"
    config.write_text(config.read_text().replace(f'"http://{closed}"', f'"https://{closed}"'))
    key.chmod(0o600)
    (tmp_path / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, tmp_path / "digests")
    status, checks = _doctor()
    assert status == 1  # the provider, the webhook and the server are still to be set up
    assert checks["base_url"] == [f"✓ base_url: https://{closed}"]
    assert checks["secret key"] == [f"✓ secret key: {key}: owned by {getpass.getuser()}, mode 600"]
    assert checks["digest"] == [f"✓ digest: {tmp_path}/digests/2026-01-23.md is there"]


def test_json_lists_every_check(tmp_path: Path) -> None:
    _init(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = run_newsletter("doctor", "--json", env=NOW)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(check["name"], check["status"]) for check in report["checks"]] == [
        ("base_url", "failed"),
        ("secret key", "ok"),
        ("database", "ok"),
        ("provider", "failed"),
        ("webhook", "failed"),
        ("proxy", "not checked"),
        ("source", "not checked"),
        ("model", "not checked"),
        ("digest", "failed"),
    ]
    assert report["checks"][1]["fix"] == ""
    assert report["checks"][0]["fix"].startswith("set base_url to the public https address")


def test_a_database_behind_or_missing_is_reported_not_made(tmp_path: Path) -> None:
    key = _init(tmp_path, "https://news.example.com")
    database = tmp_path / "subscribers" / "newsletter.db"
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE schema_version SET version = 1")
    _, checks = _doctor()
    assert checks["database"] == [
        f"✗ database: sqlite:///{database} is at schema version 1 of {len(db.MIGRATIONS)}",
        "  fix: back it up, then run any command (newsletter lists list): it upgrades the schema",
    ]
    database.unlink()
    key.unlink()
    _, checks = _doctor()
    assert checks["database"][0] == f"✗ database: {database} does not exist"
    assert checks["secret key"][0] == f"✗ secret key: {key} is missing"
    assert not database.exists()


# -- the provider's credentials, tried against the fakes --------------------------------------------


def _sendgrid(**behaviour: Any) -> FakeSendGrid:
    return FakeSendGrid(api_key=API_KEY, **behaviour)


def _sendgrid_env(fake: Any) -> dict[str, str]:
    return {"NEWSLETTER_SENDGRID_API_URL": fake.url, "SENDGRID_API_KEY": API_KEY}


def _postmark_env(fake: Any, token: str = "server-token") -> dict[str, str]:
    return {"NEWSLETTER_PROVIDER": "postmark", "NEWSLETTER_POSTMARK_API_URL": fake.url, "POSTMARK_SERVER_TOKEN": token}


@pytest.mark.parametrize(
    ("fake", "env", "expected"),
    [
        (lambda: _sendgrid(), _sendgrid_env, ["✓ provider: sendgrid: the API key has the mail.send scope"]),
        (
            lambda: _sendgrid(scopes=("suppression.read", "stats.read")),
            _sendgrid_env,
            [
                "✗ provider: sendgrid: the API key lacks the mail.send scope (2 other scopes)",
                "  fix: give the key the Mail Send permission in SendGrid (Settings, API Keys), or make one that has it",
            ],
        ),
        (
            lambda: FakeSendGrid(api_key="another-key"),
            _sendgrid_env,
            ["✗ provider: sendgrid: SendGrid refused the API key (401)", "  fix: set SENDGRID_API_KEY to a key SendGrid accepts"],
        ),
        (
            lambda: FakePostmark(token="server-token", server_name="Papers"),
            _postmark_env,
            ["✓ provider: postmark: the server token opens the server 'Papers'"],
        ),
        (
            lambda: FakePostmark(token="another-token"),
            _postmark_env,
            [
                "✗ provider: postmark: Postmark refused the server token (401)",
                "  fix: set POSTMARK_SERVER_TOKEN to the server's API token",
            ],
        ),
    ],
    ids=["sendgrid", "sendgrid-without-mail.send", "sendgrid-refused", "postmark", "postmark-refused"],
)
def test_the_provider_check_asks_the_provider_and_sends_nothing(fake: Any, env: Any, expected: list[str]) -> None:
    with fake() as server:
        _, checks = _doctor(env=env(server))
    assert checks["provider"] == expected
    assert server.delivered() == []


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        (("sender", PASSWORD), ["✓ provider: smtp: the SMTP server 127.0.0.1:{port}: connected (STARTTLS), logged in as 'sender'"]),
        (
            ("sender", "another-password"),
            [
                "✗ provider: smtp: the SMTP server 127.0.0.1:{port} refused the login of 'sender': 535 5.7.8 "
                "Authentication credentials invalid; check smtp_username and NEWSLETTER_SMTP_PASSWORD",
                "  fix: set smtp_username and NEWSLETTER_SMTP_PASSWORD to a login the server takes",
            ],
        ),
    ],
    ids=["login", "login-refused"],
)
def test_the_smtp_check_connects_starts_tls_and_logs_in(
    login: tuple[str, str], expected: list[str], certificate: ssl.SSLContext  # noqa: F811
) -> None:
    with FakeSMTP(security="starttls", tls=certificate, login=login) as fake:
        env = {
            "NEWSLETTER_PROVIDER": "smtp",
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(fake.port),
            "NEWSLETTER_SMTP_USERNAME": "sender",
            "NEWSLETTER_SMTP_PASSWORD": PASSWORD,
        }
        _, checks = _doctor(env=env)
    assert checks["provider"] == [line.format(port=fake.port) for line in expected]
    assert fake.received == []


# -- the digest's source and model ------------------------------------------------------------------


def test_the_source_and_the_model_are_asked_when_configured() -> None:
    with FakeHuggingFace({"2026-01-23": make_papers(8, date="2026-01-23")}) as source, FakeOpenAI(
        api_key="llm-key", models=["qwen2.5:7b"]
    ) as model:
        env = {
            "NEWSLETTER_SOURCE": "huggingface",
            "NEWSLETTER_SOURCE_URL": source.url,
            "NEWSLETTER_SUMMARIZER": "openai",
            "NEWSLETTER_LLM_BASE_URL": f"{model.url}/v1",
            "NEWSLETTER_LLM_API_KEY": "llm-key",
        }
        _, checks = _doctor(env={**env, "NEWSLETTER_LLM_MODEL": "qwen2.5:7b"})
        assert checks["source"] == [f"✓ source: {source.url} answers (5 papers for 2026-01-23)"]
        assert checks["model"] == [f"✓ model: {model.url}/v1/models offers 'qwen2.5:7b'"]
        # With a source, the run writes the day's digest itself: its absence is no failure.
        assert checks["digest"] == [
            f"– digest: not checked: {Path.cwd()}/digests/2026-01-23.md is not there yet, and newsletter run generates it"
        ]
        _, checks = _doctor(env={**env, "NEWSLETTER_LLM_MODEL": "llama3", "NEWSLETTER_LLM_API_KEY": "wrong"})
        assert checks["model"] == [
            f"✗ model: {model.url}/v1/models refused NEWSLETTER_LLM_API_KEY (401)",
            "  fix: set NEWSLETTER_LLM_API_KEY to a key the server takes",
        ]
        _, checks = _doctor(env={**env, "NEWSLETTER_LLM_MODEL": "llama3"})
        assert checks["model"] == [
            f"✗ model: {model.url}/v1/models does not offer 'llama3' (it offers qwen2.5:7b)",
            "  fix: set llm_model to one it offers, or load the model on the server",
        ]
    assert [call.path for call in model.requests] == ["/v1/models"] * 3


def test_what_a_hostile_model_server_sends_is_shown_as_plain_text_cut_short() -> None:
    hostile = ["\x1b[31mRED\x1b[0m", "\x1b]8;;http://evil.example/\x1b\\link", "line\n✓ database: forged", "x" * 3000]
    with FakeOpenAI(api_key="llm-key", models=hostile) as model:
        env = {
            "NEWSLETTER_SUMMARIZER": "openai",
            "NEWSLETTER_LLM_BASE_URL": f"{model.url}/v1",
            "NEWSLETTER_LLM_API_KEY": "llm-key",
            "NEWSLETTER_LLM_MODEL": "llama3",
        }
        result = run_newsletter("doctor", env={**NOW, **env})
    [line] = [line for line in result.stdout.splitlines() if line.startswith("✗ model:")]
    assert "\x1b" not in result.stdout and "✓ database: forged" not in result.stdout.splitlines()
    assert "[31mRED" in line and "line ✓ database: forged" in line and "x" * 80 in line and "x" * 81 not in line


def _dripping_handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                for _ in range(60):  # a byte a second: every read is quick, the answer never ends
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    threading.Event().wait(1)
            except OSError:
                pass

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def test_a_server_that_never_finishes_its_answer_is_given_up_on() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _dripping_handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "NEWSLETTER_SUMMARIZER": "openai",
            "NEWSLETTER_LLM_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
            "NEWSLETTER_LLM_API_KEY": "llm-key",
            "NEWSLETTER_LLM_MODEL": "llama3",
            "NEWSLETTER_CONNECT_TIMEOUT": "1",
            "NEWSLETTER_READ_TIMEOUT": "2",
        }
        _, checks = _doctor(env=env)
    finally:
        server.shutdown()
    assert checks["model"] == [
        "✗ model: no whole answer within 3 s",
        "  fix: check that the server it asks answers, and how fast",
    ]


# -- the webhook and the proxy: newsletter serve itself, then behind a TLS reverse proxy --------------


def _proxy_handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    """A reverse proxy as the README's nginx block is: the client's address in X-Forwarded-For,
    its own Server header on every answer."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {"X-Forwarded-For": self.client_address[0], "X-Forwarded-Proto": "https"}
            answer = httpx.request(self.command, upstream + self.path, headers=headers, content=body)
            reply(self, answer.status_code, {}, answer.content)

        do_GET = do_POST = _forward

        def version_string(self) -> str:  # the Server header
            return "test-proxy"

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@contextmanager
def _tls_proxy(upstream: str, context: ssl.SSLContext) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(upstream))
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_behind_a_tls_proxy_every_check_passes(tmp_path: Path, certificate: ssl.SSLContext) -> None:  # noqa: F811
    _, public_key = webhook_key()
    port = free_port()
    key = _init(tmp_path, f"http://127.0.0.1:{port}")
    (tmp_path / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, tmp_path / "digests")
    config = tmp_path / "newsletter.toml"
    served = {**NOW, "NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key}
    with ExitStack() as stack:
        sendgrid = stack.enter_context(_sendgrid())
        stack.enter_context(serving_newsletter("--config", str(config), "serve", "--port", str(port), port=port, env=served))
        env = {**served, **_sendgrid_env(sendgrid)}

        # newsletter serve itself at base_url: the webhook answers, but nothing stands in front.
        status, checks = _doctor(env=env)
        assert checks["webhook"] == [
            f"✓ webhook: the key is set, and http://127.0.0.1:{port}/webhooks/sendgrid refuses an unsigned "
            "request (403) as it should"
        ]
        assert checks["proxy"] == [
            f"✗ proxy: http://127.0.0.1:{port} is answered by newsletter serve itself: no reverse proxy in front "
            "terminates https and sets X-Forwarded-For",
            "  fix: put the README's nginx server block (Deployment) in front of newsletter serve on 127.0.0.1:8000",
        ]

        proxy = stack.enter_context(_tls_proxy(f"http://127.0.0.1:{port}", certificate))
        result = run_newsletter("doctor", env={**env, "NEWSLETTER_BASE_URL": proxy})
        assert result.returncode == 0, result.stdout
        assert result.stdout.splitlines() == [
            f"✓ base_url: {proxy}",
            f"✓ secret key: {key}: owned by {getpass.getuser()}, mode 600",
            f"✓ database: sqlite:///{tmp_path}/subscribers/newsletter.db: reachable, schema up to date (version {len(db.MIGRATIONS)})",
            "✓ provider: sendgrid: the API key has the mail.send scope",
            f"✓ webhook: the key is set, and {proxy}/webhooks/sendgrid refuses an unsigned request (403) as it should",
            f"✓ proxy: {proxy} answers through a proxy (Server: test-proxy)",
            '– source: not checked: digests are written by hand (source = "none")',
            '– model: not checked: summaries come from the source (summarizer = "none")',
            f"✓ digest: {tmp_path}/digests/2026-01-23.md is there",
        ]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
