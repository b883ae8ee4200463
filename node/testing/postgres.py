"""A throwaway PostgreSQL server for tests: initdb and pg_ctl in a temporary directory, torn down after."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

SUPERUSER: Final[str] = "hedui"
_RUN_AS: Final[str] = "postgres"  # the Debian package's user; initdb refuses to run as root
_FALLBACK_USER: Final[str] = "hedui-pg"
_START_TIMEOUT_S: Final[int] = 60
_PORT_TRIES: Final[int] = 8
_SETTINGS: Final[dict[str, str]] = {
    "max_connections": "200",
    "shared_buffers": "32MB",
    "synchronous_commit": "on",
    "fsync": "on",
    "log_min_messages": "warning",
    "log_statement": "none",
    "logging_collector": "off",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started here; the message says why (tests fail with it, never skip)."""


def bin_dir() -> Path:
    """The directory of initdb/pg_ctl/pg_isready: the newest /usr/lib/postgresql/*/bin, else the PATH's pg_ctl."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise PostgresUnavailable("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin); "
                                  "install the Debian package postgresql (scripts/test does)")
    return Path(found).resolve().parent


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged OS user to run the server as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in (_RUN_AS, _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    created = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
                             capture_output=True, text=True)
    if created.returncode != 0:
        raise PostgresUnavailable(f"running as root, no user {_RUN_AS!r}, and useradd {_FALLBACK_USER} failed: "
                                  f"{created.stderr.strip()}")
    return pwd.getpwnam(_FALLBACK_USER)


def _free_port(host: str | None) -> int:
    """A TCP port nobody listens on at `host` now (bound and released); random when `host` is not ours to bind."""
    with socket.socket(socket.AF_INET6 if host and ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host or "127.0.0.1", 0))
        except OSError:  # e.g. an address of another network namespace: PostgreSQL's own bind decides
            return random.randint(20000, 60000)
        return int(probe.getsockname()[1])


class PostgresServer:
    """One private PostgreSQL cluster under `root`: a unix socket in `root/sock`, optionally TCP on `host`.

    The superuser `hedui` connects over the socket without a password (trust) and over TCP with a
    random password (scram-sha-256), so URLs work from other network namespaces too. `wrap` prefixes
    every server command (e.g. `["ip", "netns", "exec", "pg"]` to run the server inside a namespace).
    """

    def __init__(self, root: Path | None = None, *, host: str | None = None, port: int | None = None,
                 wrap: Sequence[str] = (), settings: dict[str, str] | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hedui-pg-")) if root is None else Path(root)
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.host = host
        self.port = port or (5432 if host is None else 0)
        self._fixed_port = port is not None
        self.wrap = list(wrap)
        self.password = secrets.token_hex(16)
        self.settings = {**_SETTINGS, **(settings or {})}
        self.bin = bin_dir()
        self.user = _server_user()
        self.running = False

    # -- commands --------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one PostgreSQL program (as the server's OS user), returning its output."""
        cmd = [*self.wrap, str(self.bin / args[0]), *args[1:]]
        # Dropping to the server's user is setpriv's job (after the wrapper, ip netns exec, which needs root), never
        # subprocess's user=/group=: those make Python fork() instead of vfork(), and in a process running gRPC
        # (the bench, a test's servers) the forked child runs gRPC's fork handlers and can abort before exec.
        if self.user is not None:
            cmd[len(self.wrap):len(self.wrap)] = ["setpriv", f"--reuid={self.user.pw_uid}",
                                                 f"--regid={self.user.pw_gid}", "--clear-groups", "--"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
               "HOME": str(self.root)}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, env=env, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{args[0]} failed: {exc}") from None
        if check and done.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed (exit {done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()[-2000:]}{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        try:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return ""
        return ("\nserver log:\n" + "\n".join(tail)) if tail else ""

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    # -- lifecycle -------------------------------------------------------------------------

    def init(self) -> None:
        """initdb the cluster (UTF-8, C collation, trust on the socket, password over TCP)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the server user must reach its socket and data directories
        if self.user is not None:
            for parent in self.root.resolve().parents:
                if not parent.stat().st_mode & 0o001:
                    raise PostgresUnavailable(f"the server runs as {self.user.pw_name}, who cannot enter {parent} "
                                              "(mode without o+x): give no root, or one under /tmp")
        self._chown(self.root)
        self.sock.mkdir(mode=0o755, exist_ok=True)
        self._chown(self.sock)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions")
        pwfile.unlink()
        with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:  # other hosts (namespaces) with the password
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("include 'hedui.conf'\n")  # rewritten before every start (see _pg_ctl_start)

    def start(self) -> Self:
        """Start the server and wait until it accepts connections (pg_ctl -w, then pg_isready)."""
        if not self.data.is_dir():
            self.init()
        tries = 1 if self._fixed_port or self.host is None else _PORT_TRIES
        for attempt in range(tries):
            if self.host is not None and not self._fixed_port:
                self.port = _free_port(self.host)
            try:
                self._pg_ctl_start()
                break
            except PostgresUnavailable as exc:
                if attempt + 1 == tries or "could not bind" not in str(exc).lower():
                    raise  # only a port taken meanwhile is worth another try
        self.running = True
        self._wait_ready()
        return self

    def _pg_ctl_start(self) -> None:
        """Write the settings (port, socket, listen address) into hedui.conf and start with pg_ctl -w."""
        lines = {**self.settings, "port": str(self.port), "unix_socket_directories": str(self.sock),
                 "listen_addresses": self.host or ""}
        conf = self.data / "hedui.conf"
        conf.write_text("".join(f"{k} = '{v}'\n" for k, v in lines.items()), encoding="utf-8")
        self._chown(conf)
        self.log.touch()
        self._chown(self.log)
        self._run("pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(self.data), "-l", str(self.log))

    def _wait_ready(self) -> None:
        """pg_isready on the socket (and on TCP when listening there) until both answer or the timeout."""
        targets = [str(self.sock)] + ([self.host] if self.host else [])
        for target in targets:
            done = self._run("pg_isready", "-h", target, "-p", str(self.port), "-U", SUPERUSER,
                             "-t", str(_START_TIMEOUT_S), check=False)
            if done.returncode != 0:
                raise PostgresUnavailable(f"PostgreSQL at {target}:{self.port} is not ready: "
                                          f"{done.stdout.strip()}{self._log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (clean), or `immediate` (like a crash: recovery from WAL at the next start)."""
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", str(_START_TIMEOUT_S), "-m", mode, "-D", str(self.data))
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop (`fast` or `immediate`) and start again on the same port and socket."""
        self.stop(mode)
        self._pg_ctl_start()
        self.running = True
        self._wait_ready()

    def close(self) -> None:
        """Stop the server and remove its directory (when this object created it)."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def pids(self) -> list[int]:
        """The postmaster and its children now (for CPU accounting); [] when it is not running."""
        try:
            main = int((self.data / "postmaster.pid").read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return []
        found = [main]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()[1]) == main:
                    found.append(int(stat.parent.name))
        return found

    # -- addresses -------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        """A libpq URL for `dbname`: over the unix socket (no password), or over TCP with the password."""
        if tcp:
            if self.host is None:
                raise ValueError("this server does not listen on TCP")
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"postgresql://{SUPERUSER}:{self.password}@{host}:{self.port}/{dbname}"
        return f"postgresql://{SUPERUSER}@/{dbname}?host={quote(str(self.sock), safe='')}&port={self.port}"

    def create_database(self, name: str | None = None, *, tcp: bool = False) -> str:
        """CREATE DATABASE (a fresh random name unless given) and return its URL."""
        import psycopg

        name = name or f"t_{secrets.token_hex(6)}"
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError("database name must be letters, digits and _")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, tcp=tcp)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ... WITH (FORCE): disconnects whoever still uses it."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_shared: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """This process's one throwaway server (started on first use, stopped and removed at exit)."""
    global _shared
    if _shared is None:
        import atexit

        server = PostgresServer(host="127.0.0.1").start()
        atexit.register(server.close)
        _shared = server
    return _shared


def _dialect(statement: str) -> str:
    """The contract suite's SQL for PostgreSQL: SQLite's blob literals x'00ff' become bytea literals."""
    return re.sub(r"\bx'([0-9a-fA-F]*)'", lambda m: f"'\\x{m.group(1)}'::bytea", statement)


def postgres_backend(tmp: Path) -> Any:
    """node.testing.backends' "postgresql" entry: a fresh database on the shared server, raw SQL through psycopg."""
    import psycopg

    from node.store.postgres.schema import guard_table, guards
    from node.testing.backends import Backend

    server = shared_server()
    name = f"t_{secrets.token_hex(6)}"
    url = server.create_database(name)

    def run(table: str, statements: Sequence[str], *, unguarded: bool) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if unguarded:
                for guard in guards(table, True):
                    conn.execute(f'DROP TRIGGER IF EXISTS "{guard}" ON "{guard_table(guard, table)}"')
            for statement in statements:
                conn.execute(_dialect(statement))

    backend = Backend(name="postgresql", url=url, data_dir=tmp / "data",
                      sql=lambda table, statement: run(table, [statement], unguarded=False),
                      tamper=lambda table, statements: run(table, statements, unguarded=True),
                      refused=(psycopg.errors.RestrictViolation,))
    backend.cleanup.append(lambda: server.drop_database(name))
    return backend


def put_on_postgres(config_paths: Sequence[Path], server: PostgresServer, *, tcp: bool = False) -> dict[Path, str]:
    """Give each member config its own fresh database on `server` (`[store] url`); config path -> URL."""
    urls = {Path(path): server.create_database(tcp=tcp) for path in config_paths}
    for path, url in urls.items():
        store_at(path, url)
    return urls


def store_at(config_path: Path, url: str) -> Path:
    """Point the member config at `url` (its `[store] url`); returns the config's path."""
    import tomllib

    from node import config as config_mod

    data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    data["store"] = {"url": url}
    config_mod.write(config_path, data)
    return config_path
