"""A throwaway PostgreSQL cluster on loopback, for the tests and ``cxrmesh up --database postgres``.

Closed by default, like every other port of the mesh: the server listens on one loopback address
only, the application role ``cxrmesh`` logs in with a generated password (SCRAM; the file holding it
is 0600 and the password is never in a URL, an argv or the log), and with ``tls`` pg_hba.conf has
only ``hostssl`` lines, so a client that does not speak TLS is refused. There is no ``trust`` line.
The superuser ``postgres`` is reachable only over the unix socket (a private directory in the data
dir) with ``peer`` authentication, mapped from the OS user that owns the cluster (or root): no
second secret to keep, and nobody who could not already read the data files can administer it.

As root (containers, CI) the server runs as the ``postgres`` user through ``setpriv``, which execs
in place: the pid the caller holds IS the postmaster, so SIGINT is a fast shutdown. (``runuser``
forks a watcher that swallows SIGINT.) The data directory outlives the process: stop, then start
on the same directory, and the rows are still there.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from cxrmesh.local.ports import free_port
from cxrmesh.local.secret_files import keep_secret
from cxrmesh.runtime.tls import TlsFiles

__all__ = ["LocalPostgres", "PostgresNotFound", "find_bindir"]

ROLE = "cxrmesh"
SUPERUSER = "postgres"
INSTALL_HINT = "install PostgreSQL: `apt-get install postgresql` (or `make test`, which installs it)"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED = {"postgres", "template0", "template1", ROLE}
_BOOTSTRAPPED = "cxrmesh.bootstrapped"  # in the data dir: role and database exist


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (initdb, postgres) on this machine."""


def find_bindir() -> Path:
    """The bin directory holding initdb and postgres: ``pg_config --bindir``, else the newest Debian one."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    debian = (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin"))
    candidates += sorted(debian, key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))], reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresNotFound(f"no PostgreSQL server binaries (initdb, postgres) found; {INSTALL_HINT}")


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_as_postgres() -> list[str]:
    """argv prefix that execs (no fork) as the postgres user when we are root; nothing otherwise."""
    if not _as_root():
        return []
    return ["setpriv", f"--reuid={SUPERUSER}", f"--regid={SUPERUSER}", "--init-groups", "--"]


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise naming the first parent directory that ``user`` cannot enter (e.g. a 0700 /root or tmp)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for parent in reversed(path.parents):
        st = parent.stat()
        bit = (
            stat.S_IXUSR
            if st.st_uid == user.pw_uid
            else stat.S_IXGRP
            if st.st_gid in groups
            else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            raise PermissionError(
                f"the {user.pw_name} user cannot enter {parent} (mode {stat.filemode(st.st_mode)}), "
                f"so it cannot run a cluster in {path}: choose a data dir under a traversable directory"
            )


class LocalPostgres:
    """A cluster in ``data_dir`` on ``host:port``; ``init()`` is idempotent and ``start()`` calls it."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
        log: Path | None = None,
        password_file: Path | None = None,
    ):
        self.data_dir = Path(data_dir).absolute()
        self.address = ipaddress.ip_address(host)  # an address, not a name: listen on exactly one
        self.host, self.tls = host, tls
        self.port = port or free_port(host)
        self.log = Path(log) if log else self.data_dir.with_name(self.data_dir.name + ".log")
        self.password_file = Path(password_file or self.data_dir.with_name(self.data_dir.name + ".password"))
        self.socket_dir = self.data_dir / "socket"
        if len(str(self.socket_dir / f".s.PGSQL.{self.port}")) > 100:
            raise ValueError(f"data dir path too long for a unix socket in it: {self.data_dir}")
        self.bindir = find_bindir()
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the cluster on disk -------------------------------------------------------------------------
    def init(self) -> None:
        """initdb (once), write the config, and create role + database (once, or when the password is new)."""
        owner = pwd.getpwnam(SUPERUSER) if _as_root() else pwd.getpwuid(os.geteuid())
        new_password = self._ensure_password()
        if not (self.data_dir / "PG_VERSION").is_file():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _as_root():
                _check_traversable(self.data_dir, owner)
                os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
            initdb = [str(self.bindir / "initdb"), "-D", str(self.data_dir), f"--username={SUPERUSER}"]
            initdb += ["--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale"]
            if code := self._spawn([*_run_as_postgres(), *initdb], wait=True):
                raise RuntimeError(f"initdb failed with {code}; see {self.log}")
        self._write_config(owner)
        if new_password or not (self.data_dir / _BOOTSTRAPPED).exists():
            self._bootstrap()

    def _ensure_password(self) -> bool:
        """Create the password file (0600, once); True when it was created now."""
        return keep_secret(self.password_file, lambda: secrets.token_urlsafe(32))

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def _write_config(self, owner: pwd.struct_passwd) -> None:
        conf = ["max_connections = 200", "fsync = on", "password_encryption = 'scram-sha-256'"]
        net = f"{self.address}/{self.address.max_prefixlen}"
        if self.tls:
            self._write(self.data_dir / "server.crt", Path(self.tls.cert).read_bytes(), 0o644, owner)
            self._write(self.data_dir / "server.key", Path(self.tls.key).read_bytes(), 0o600, owner)
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
            conf.append("ssl_min_protocol_version = 'TLSv1.2'")
            hba = f"hostssl all {ROLE} {net} scram-sha-256\n"
        else:
            conf.append("ssl = off")
            hba = f"host all {ROLE} {net} scram-sha-256\n"
        hba = f"local all {SUPERUSER} peer map=owner\n" + hba
        ident = "".join(f"owner {user} {SUPERUSER}\n" for user in sorted({"root", owner.pw_name}))
        self._write(self.data_dir / "cxrmesh.conf", ("\n".join(conf) + "\n").encode(), 0o600, owner)
        self._write(self.data_dir / "pg_hba.conf", hba.encode(), 0o600, owner)
        self._write(self.data_dir / "pg_ident.conf", ident.encode(), 0o600, owner)
        main = self.data_dir / "postgresql.conf"
        if "include 'cxrmesh.conf'" not in main.read_text():
            with main.open("a") as out:
                out.write("\ninclude 'cxrmesh.conf'\n")
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)

    @staticmethod
    def _write(path: Path, data: bytes, mode: int, owner: pwd.struct_passwd) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(path, mode)
        os.chown(path, owner.pw_uid, owner.pw_gid)

    def _bootstrap(self) -> None:
        """On a socket-only server: the role (SCRAM verifier made here, so the server never sees the
        plaintext), its database, and no CONNECT on the admin databases for anyone else."""
        self._spawn(self.command(listen=""))
        try:
            self._wait(30, tcp=False)
            with self.admin() as conn:
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
                scram = conn.pgconn.encrypt_password(self.password.encode(), b"cxrmesh", b"scram-sha-256")
                alter = sql.SQL("ALTER ROLE {} PASSWORD {}")
                conn.execute(alter.format(sql.Identifier(ROLE), sql.Literal(scram.decode())))
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ROLE,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(ROLE)))
                conn.execute("REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC")
        finally:
            self.stop()
        (self.data_dir / _BOOTSTRAPPED).touch()

    # -- the server process --------------------------------------------------------------------------
    def command(self, listen: str | None = None) -> list[str]:
        """argv running the server in the foreground; SIGINT to that pid is a fast shutdown."""
        listen = self.host if listen is None else listen
        server = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        server += ["-c", f"listen_addresses={listen}", "-c", f"unix_socket_directories={self.socket_dir}"]
        return [*_run_as_postgres(), *server]

    def start(self, timeout_s: float = 30) -> None:
        self.init()
        self._spawn(self.command())
        self._wait(timeout_s, tcp=True)

    def _spawn(self, argv: list[str], wait: bool = False) -> int:
        """Run ``argv`` with output to the log, in its own session, from / (ours may be closed to postgres);
        ``wait``: to its end (its exit status), else in the background as ``self.proc``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd="/", start_new_session=True
            )
        if wait:
            return proc.wait()
        self.proc = proc
        return 0

    def ready(self, tcp: bool = True) -> bool:
        """True when the server accepts connections on ``host:port`` (or on the unix socket)."""
        where, who = (self.host, ROLE) if tcp else (str(self.socket_dir), SUPERUSER)  # no FATAL in the log
        argv = [str(self.bindir / "pg_isready"), "-q", "-h", where, "-p", str(self.port), "-t", "1"]
        return subprocess.run([*argv, "-U", who, "-d", who], check=False).returncode == 0

    def _wait(self, timeout_s: float, tcp: bool) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready(tcp):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"postgres not ready after {timeout_s:.0f}s; see {self.log}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGINT (fast shutdown), wait, then SIGKILL the whole session; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients and databases -----------------------------------------------------------------------
    def url(self, database: str = ROLE) -> str:
        """``postgresql://cxrmesh@host:port/db`` (+ verify-full against the CA with TLS); no password."""
        host = f"[{self.host}]" if self.address.version == 6 else self.host
        url = f"postgresql://{ROLE}@{host}:{self.port}/{database}"
        if self.tls:
            url += f"?sslmode=verify-full&sslrootcert={quote(str(self.tls.ca))}"
        return url

    def admin(self) -> psycopg.Connection:
        """A superuser session over the local socket (autocommit): for set-up, and for tests that cut
        a database off (``ALTER DATABASE ... ALLOW_CONNECTIONS false`` and ``pg_terminate_backend``)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str) -> str:
        """A new database owned by ``cxrmesh``; returns its URL."""
        ident = sql.Identifier(_valid(name))
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, sql.Identifier(ROLE)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending any sessions still connected to it."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_valid(name)))
            )


def _valid(name: str) -> str:
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"not an allowed database name: {name!r} (lowercase letters, digits, _)")
    return name
