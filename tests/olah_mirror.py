"""Run olah (a self-hosted Hub mirror, what air-gapped users run) in offline mode, for tests.

Offline, olah serves only repos it holds as plain git repositories under
``{mirrors}/{models,datasets}/{org}/{name}``; it never calls huggingface.co. Files are plain git
blobs (no LFS). Unlike the Hub it answers 401, not 404 EntryNotFound, for a missing file, and
401 for ``/api/models/{repo}`` without ``/revision/{rev}``. So a data set repo needs a
README.md: ``load_dataset`` probes it first and takes olah's 401 for "no such data set".

Usage::

    with OlahMirror(tmp_dir) as olah:
        olah.add_repo("org/tiny", folder)          # git init + commit of the folder's files
        env = {**os.environ, "HF_ENDPOINT": olah.endpoint}   # for a subprocess client
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "hyperrep tests", "GIT_AUTHOR_EMAIL": "tests@hyperrep.invalid",
    "GIT_COMMITTER_NAME": "hyperrep tests", "GIT_COMMITTER_EMAIL": "tests@hyperrep.invalid",
}
_REPO_DIRS = {"model": "models", "dataset": "datasets"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_mirror_repo(mirrors: str | os.PathLike, repo_id: str, folder: str | os.PathLike,
                     repo_type: str = "model") -> Path:
    """Copy ``folder`` into ``{mirrors}/{models|datasets}/{repo_id}`` as a one-commit git repo
    on branch ``main``; returns the repo path. Raises ValueError for a bad id or type."""
    if repo_type not in _REPO_DIRS:
        raise ValueError(f"repo_type must be one of {sorted(_REPO_DIRS)}, got {repo_type!r}")
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    target = Path(mirrors) / _REPO_DIRS[repo_type] / repo_id
    if target.exists():
        raise ValueError(f"{target} already exists: pick another repo_id")
    shutil.copytree(folder, target)
    env = {**os.environ, **_GIT_IDENTITY}

    def git(*args):
        subprocess.run(["git", *args], cwd=target, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", f"Add {repo_id}")
    return target


class OlahMirror:
    """An ``olah-cli`` subprocess on 127.0.0.1 serving ``{root}/mirrors`` offline.

    ``start()`` returns once olah answers HTTP (about 1 s); ``stop()`` terminates it.
    """

    def __init__(self, root: str | os.PathLike, startup_timeout: float = 60.0):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def add_repo(self, repo_id: str, folder: str | os.PathLike, repo_type: str = "model") -> Path:
        """Serve ``folder`` as ``repo_id`` (olah looks repos up per request: works while running)."""
        return make_mirror_repo(self.mirrors, repo_id, folder, repo_type)

    def _write_config(self) -> Path:
        # hf-netloc points at a closed port: even a misconfigured olah cannot reach the real Hub.
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'repos-path = "{self.root / "cache"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            'hf-netloc = "127.0.0.1:9"\n'
            'hf-lfs-netloc = "127.0.0.1:9"\n'
            "metadata-cache-ttl = 0\n"
            "\n[accessibility]\n"
            "offline = true\n"
        )
        return config

    def start(self) -> OlahMirror:
        if self.process is not None:
            return self
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        cli = Path(sys.executable).with_name("olah-cli")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "olah.server"]
        # The CLI default (600 s) would override the config file.
        command += ["--metadata-cache-ttl", "0"]
        self.log = open(self.root / "olah.out", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*command, "--config", str(config), "--log-path", str(self.root / "logs")],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (self.root / "olah.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"olah exited with code {self.process.returncode}:\n{output}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.endpoint} within {self.startup_timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self.log.close()

    def __enter__(self) -> OlahMirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
