"""The cluster-fidelity harness (``make test-cluster``): real servers on 127.0.0.1 and a task sandbox.

- :class:`Postgres`: a private PostgreSQL cluster (Debian's ``initdb`` + ``pg_ctl``) on a free loopback
  port, password authentication, run as the task UID (PostgreSQL refuses root).
- :class:`S3Server`: moto's S3-compatible server with one bucket (MinIO cannot be installed here).
- :class:`MlflowServer`: ``mlflow server --app-name basic-auth`` on that database, artifacts proxied to
  the bucket (``mlflow-artifacts:``); the admin from the environment (as the Deployment's Secret gives
  it), identities made by :mod:`hmarl.tracking.identities`.
- :class:`Sandbox`: runs a command as UID 10001 (``setpriv``) in a private mount namespace (``unshare``)
  where the checkout is bind-mounted read-only and used as the working directory, HOME is a root-owned
  folder, and only the given folders are writable. The interpreter is Debian's ``/usr/bin/python3.11``
  (the CI image's Python lives in root's home) in a venv that reads the checkout's ``.venv`` packages
  (installed from requirements.lock) through a ``.pth`` file.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

TASK_UID = 10001
REPO = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3.11")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owned_dir(path: Path, mode: int = 0o700, uid: int = TASK_UID) -> Path:
    """A folder the task UID (or ``uid``) owns (writable for it)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid if uid == TASK_UID else -1)
    path.chmod(mode)
    return path


def as_task_user(cmd: list[str], uid: int = TASK_UID, gid: int = TASK_UID) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all", *cmd]


def wait_for(check, what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


# --------------------------------------------------------------------------- PostgreSQL
def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL not installed: `make test-cluster` installs it (apt-get install postgresql)"
        )
    return found[-1].parent


class Postgres:
    """Runs as Debian's ``postgres`` account (initdb needs a passwd entry and refuses root)."""

    def __init__(self, root: Path):
        account = pwd.getpwnam("postgres")
        self.uid, self.gid = account.pw_uid, account.pw_gid
        self.root = owned_dir(root, uid=self.uid)
        self.data = self.root / "data"
        self.port = free_port()
        self.user, self.password = "mlflow", secrets.token_hex(12)

    def _run(self, *args: str) -> None:
        cmd = as_task_user([str(pg_bin() / args[0]), *args[1:]], self.uid, self.gid)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> Postgres:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        os.chown(pwfile, self.uid, self.gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth=scram-sha-256"
        )
        pwfile.unlink()
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        return self

    @property
    def uri(self) -> str:  # the database `initdb` made for its superuser is "postgres"
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(as_task_user([str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"], self.uid, self.gid),
                       check=False, capture_output=True)  # fmt: skip


# --------------------------------------------------------------------------- servers
class Service:
    """A server process on a free loopback port, in its own process group, logging to ``root/server.log``."""

    health = "/health"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self, cmd: list[str], env: dict[str, str], timeout: float) -> None:
        self.log = (self.root / "server.log").open("w")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self.healthy, f"{cmd[2]} on {self.uri} (log: {self.root / 'server.log'})", timeout=timeout)

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"server exited: {(self.root / 'server.log').read_text()[-3000:]}")
        try:
            return requests.get(f"{self.uri}{self.health}", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()


class S3Server(Service):
    """moto's S3-compatible server with one bucket: MLflow's artifact destination, as S3 on a cluster."""

    health = "/moto-api/"
    bucket = "mlflow-artifacts"
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def start(self) -> S3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.launch(cmd, {**os.environ, **self.credentials}, timeout=60)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    @property
    def env(self) -> dict[str, str]:
        """What an S3 client (MLflow's server) needs to reach this store."""
        return {**self.credentials, "MLFLOW_S3_ENDPOINT_URL": self.uri}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.uri,
            **{k.lower(): v for k, v in self.credentials.items() if k != "AWS_DEFAULT_REGION"},
            region_name="us-east-1",
        )

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


class MlflowServer(Service):
    """``mlflow server --app-name basic-auth`` (admin from its config), artifacts proxied to
    ``destination`` (an ``s3://`` bucket with ``env`` for its endpoint, or a local folder)."""

    def __init__(self, root: Path, backend_uri: str, destination: str, env: dict[str, str] | None = None):
        super().__init__(root)
        self.backend_uri, self.destination, self.extra_env = backend_uri, destination, dict(env or {})
        self.admin = ("admin", secrets.token_hex(12))

    def start(self) -> MlflowServer:
        config = self.root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = {self.backend_uri}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env = {
            **os.environ,
            **self.extra_env,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": self.admin[0],  # as the Deployment passes them: from a Secret
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", self.backend_uri, "--artifacts-destination", self.destination,
               "--app-name", "basic-auth", "--workers", "1"]  # fmt: skip
        self.launch(cmd, env, timeout=180)
        return self


# --------------------------------------------------------------------------- task sandbox
class Sandbox:
    """Commands as a cluster task would run them: UID 10001, checkout + HOME read-only, a few writable folders."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        self.checkout = root / "app"  # mount point of the read-only checkout (the task's working dir)
        self.checkout.mkdir(exist_ok=True)
        # the mount shows the checkout's own root folder, which an image's /app lets every user enter; a
        # clone made in a private folder (mktemp -d: 0700) does not, so give others read/enter on it alone
        REPO.chmod(REPO.stat().st_mode | 0o005)
        self.home = root / "home"  # root-owned: read-only for the task
        self.home.mkdir(exist_ok=True)
        self.scratch = owned_dir(root / "scratch")
        self.tmp = owned_dir(root / "tmp", 0o1777)
        self.venv = root / "venv"
        self._make_venv()

    def _make_venv(self) -> None:
        if not DEBIAN_PYTHON.is_file():
            raise RuntimeError(
                f"{DEBIAN_PYTHON} missing: `make test-cluster` installs it (apt-get install python3)"
            )
        subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = next(self.venv.glob("lib/python3.11/site-packages"))
        packages = self.checkout / ".venv" / "lib" / "python3.11" / "site-packages"
        # the mounted checkout's src/ first (the editable install's own path names the clone's real
        # folder, which UID 10001 may not traverse: mktemp -d makes it 0700), then its packages (with
        # their .pth files)
        (site / "hmarl_checkout.pth").write_text(
            f"{self.checkout / 'src'}\nimport site; site.addsitedir({str(packages)!r})\n"
        )
        self.venv.chmod(0o755)

    def command(self, cmd: list[str], writable: list[Path] = (), cwd: Path | None = None) -> list[str]:
        """``cmd`` (``python`` = the sandbox interpreter) wrapped: namespace, read-only mounts, UID drop."""
        cmd = [str(self.venv / "bin" / "python") if c == "python" else str(c) for c in cmd]
        for path in writable:
            owned_dir(Path(path))
        mounts = (f"mount --bind {REPO} {self.checkout} && mount -o remount,ro,bind {self.checkout} && "
                  f"mount --bind {self.home} {self.home} && mount -o remount,ro,bind {self.home} && ")  # fmt: skip
        inner = " ".join(shlex_quote(c) for c in as_task_user(cmd))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{mounts} cd {shlex_quote(str(cwd or self.checkout))} && exec {inner}"]  # fmt: skip

    def env(self, **extra: str) -> dict[str, str]:
        """A task's environment: nothing of root's but PATH and locale; HOME read-only; scratch writable."""
        keep = {k: os.environ[k] for k in ("LANG", "LC_ALL") if k in os.environ}
        return {
            **keep,
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "HMARL_HOME": str(self.scratch),
            "PYTHONPATH": str(self.checkout / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DVC_NO_ANALYTICS": "1",
            "USER": "hmarl",  # getpass.getuser() (MLflow's user tag): UID 10001 has no passwd entry here
            "LOGNAME": "hmarl",
            **extra,
        }

    def run(self, cmd: list[str], writable: list[Path] = (), cwd: Path | None = None, timeout: float = 1200,
            **env: str) -> subprocess.CompletedProcess:  # fmt: skip
        # errors="backslashreplace": the KFP runner's log can split a multi-byte character (seen once: a
        # lone 0xa6 of "…"); a log byte must not fail a run that succeeded
        return subprocess.run(self.command(cmd, writable, cwd), env=self.env(**env), capture_output=True,
                              text=True, errors="backslashreplace", timeout=timeout, check=False)  # fmt: skip

    def popen(self, cmd: list[str], writable: list[Path] = (), **env: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(cmd, writable), env=self.env(**env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="backslashreplace",
                                start_new_session=True)  # fmt: skip


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
