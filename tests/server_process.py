"""Servers the tests run as real processes on 127.0.0.1, with their logs kept for failure reports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import httpx

REPO = Path(__file__).resolve().parents[1]
ADAPTER_ROUTER = str(Path(sys.executable).with_name("adapter-router"))
"""The console script of the environment running the tests."""

STARTUP_TIMEOUT_SECONDS = 600
"""How long a server may take to start serving /health, in seconds; a gateway trains its router first."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server started as a subprocess, its output written to ``log_file``.

    Parameters
    ----------
    name : str
        Shown in failure reports.
    command : list of str
        The command line.
    port : int
        The port the command listens on.
    log_file : Path
    env : dict of str to str, optional
        Environment variables set for the process on top of the test process's own.
    """

    running: ClassVar[list[ServerProcess]] = []
    """Every server started and not yet stopped, for the failure reports."""

    def __init__(
        self, name: str, command: list[str], port: int, log_file: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.env = dict(env or {})
        self.command = command
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL, without ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, health_path: str = "/health") -> ServerProcess:
        """Start the process and wait until ``health_path`` returns HTTP 200.

        Raises ``RuntimeError`` with the server's log if it exits or does not respond in time.
        """
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **self.env},
            )
        ServerProcess.running.append(self)

        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + health_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer {health_path} in {STARTUP_TIMEOUT_SECONDS} s:\n{self.log()}"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send ``sig`` and wait for the process to exit; return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in ServerProcess.running:
            ServerProcess.running.remove(self)
        return self.process.returncode

    def log(self, max_chars: int = 20_000) -> str:
        """Return the end of the server's output."""
        text = self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""
        return text[-max_chars:]
