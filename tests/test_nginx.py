"""The README's nginx server block, run as it stands in Debian's nginx in front of `newsletter serve`
on 127.0.0.1: the sign-up limit counts each visitor apart whatever X-Forwarded-For they send, and no
reader's token reaches nginx's logs, whether the server answers or is down.

The block is read from the README, so the deployment it documents is the one tested; only what
cannot be had here is replaced (the ports, the certificate's paths, the log folder)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from newsletter import db
from newsletter.config import load_settings
from newsletter.subscribers import create_list
from newsletter.tokens import ConfirmLinks, UnsubscribeLinks
from testkit.projects import add_subscribers, engine_of, write_config
from testkit.servers import free_port, running, serving, wait_for_port

from .support import ROOT

pytestmark = pytest.mark.slow  # every test here takes seconds: `make test-fast` leaves them out

HOST = "news.example.com"
RATE = 3


def readme_block() -> str:
    [block] = re.findall(r"```nginx\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return block


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert, private = folder / "fullchain.pem", folder / "privkey.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, private


def nginx_conf(folder: Path, *, https: int, http: int, upstream: int) -> Path:
    """A whole nginx.conf around the README's block, for this test's folder and ports."""
    cert, key = self_signed(folder)
    logs = folder / "logs"
    block = (
        readme_block()
        .replace("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;")
        .replace("listen 80;", f"listen 127.0.0.1:{http};")
        .replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
        .replace("/etc/letsencrypt/live/news.example.com/fullchain.pem", str(cert))
        .replace("/etc/letsencrypt/live/news.example.com/privkey.pem", str(key))
        .replace("/var/log/nginx/", f"{logs}/")
    )
    # No IPv6 here: the sandbox may have none.
    block = "\n".join(line for line in block.splitlines() if "listen [::]" not in line)
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {logs}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {logs}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{block}
}}
"""
    )
    logs.mkdir()
    return conf


@dataclass
class Proxied:
    url: str  # nginx's https address
    serve_port: int
    config: Path
    folder: Path

    def client(self, source: str) -> httpx.Client:
        """A visitor connecting to nginx from `source`: Linux routes all of 127.0.0.0/8 to the loopback
    interface, so 127.0.0.2 and 127.0.0.3 are two visitors."""
        transport = httpx.HTTPTransport(local_address=source, verify=False)
        return httpx.Client(transport=transport, base_url=self.url, headers={"Host": HOST}, timeout=30)

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in (self.folder / "logs").iterdir())


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        pytest.fail("Debian's nginx is not installed: `make test` installs it (nginx-light)")
    folder = tmp_path / "nginx"
    folder.mkdir()
    https, http, upstream = free_port(), free_port(), free_port()
    conf = nginx_conf(folder, https=https, http=http, upstream=upstream)
    config = write_config(
        tmp_path, base_url=f"https://{HOST}", signup_rate_per_hour=RATE, record_consent_ip=True
    )
    settings = load_settings(config)
    with engine_of(settings).begin() as conn:
        create_list(conn, "papers", now=settings.clock())
    with running([nginx, "-c", str(conf), "-p", str(folder)], https):
        wait_for_port(http)
        yield Proxied(f"https://127.0.0.1:{https}", upstream, config, folder)


def queued_and_taken(config: Path) -> int:
    """Sign-ups the server accepted from the form (each counted once, queued or taken)."""
    settings = load_settings(config)
    with engine_of(settings).connect() as conn:
        return conn.execute(select(func.count()).select_from(db.signup_attempts)).scalar_one()


def test_a_spoofed_header_gets_no_extra_sign_ups_and_two_visitors_have_their_own_limits(proxied: Proxied) -> None:
    with serving(proxied.config, port=proxied.serve_port):
        with proxied.client("127.0.0.2") as spoofer, proxied.client("127.0.0.3") as honest:
            for n in range(RATE * 3):
                answer = spoofer.post(
                    "/subscribe/papers",
                    data={"email": f"spoof{n}@example.com"},
                    headers={"X-Forwarded-For": f"198.51.100.{n}"},
                )
                assert answer.status_code == 200
            assert queued_and_taken(proxied.config) == RATE
            # The spoofer used up its own limit, not the honest visitor's.
            for n in range(RATE):
                assert honest.post("/subscribe/papers", data={"email": f"honest{n}@example.com"}).status_code == 200
            assert queued_and_taken(proxied.config) == 2 * RATE
    # Consent is recorded with the address nginx saw, never one a client wrote.
    settings = load_settings(proxied.config)
    with engine_of(settings).connect() as conn:
        attempts = conn.execute(select(db.signup_attempts.c.client)).scalars().all()
    assert len(set(attempts)) == 2


def test_no_token_reaches_nginx_logs_whether_the_server_answers_or_not(proxied: Proxied) -> None:
    settings = load_settings(proxied.config)
    (sid,) = add_subscribers(settings, 1, ["reader@example.com"], db.SUBSCRIBED)
    unsubscribe = UnsubscribeLinks(settings.links).token(1, sid, "reader@example.com")
    confirm = ConfirmLinks(settings.links).token(1, sid, "reader@example.com", settings.clock())
    paths = [f"/unsubscribe/{unsubscribe}", f"/preferences/{unsubscribe}", f"/confirm/{confirm}"]

    def visit(client: httpx.Client) -> list[int]:
        codes = [client.get(path).status_code for path in paths]
        codes.append(client.post(f"/resubscribe/{unsubscribe}", data={"ticket": "x"}).status_code)
        codes.append(client.post(f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"}).status_code)
        return codes

    with proxied.client("127.0.0.2") as client:
        with serving(proxied.config, port=proxied.serve_port):
            assert client.get("/subscribe/papers").status_code == 200
            assert all(code < 500 for code in visit(client))
        # The server down: nginx's error log names the request of every failure it logs.
        assert set(visit(client)) == {502}
        assert client.get("/subscribe/papers").status_code == 502
        time.sleep(0.2)  # nginx writes its logs as it goes; give the last line a moment
    logs = proxied.logs()
    assert "GET /subscribe/papers" in logs and "connect() failed" in logs  # the logs were written
    for secret in (unsubscribe, confirm, unsubscribe.rsplit(".", 1)[-1], confirm.rsplit(".", 1)[-1]):
        assert secret not in logs
    for kind in ("unsubscribe", "resubscribe", "confirm", "preferences"):
        assert f"/{kind}/" not in logs
