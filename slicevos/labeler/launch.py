"""``slicevos-label`` as a child process, driven over HTTP: for tests and the benchmark.

::

    server = LabelServer([scan, "--out", out])      # waits for the printed URL
    server.client.post("/api/stroke", json=...)       # httpx client with the token set
    printed = server.finish(signal.SIGINT)            # Ctrl-C; returns what it printed
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from slicevos.labeler.server import TOKEN_HEADER

URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/\?token=(\S+)")


class LabelServer:
    """``python -m slicevos.cli.label ARGS --port 0``, its output collected line by line;
    ``url`` (the page, token included), ``base``, ``token`` and an httpx ``client``."""

    def __init__(self, args: Sequence[str], wait_s: float = 180.0) -> None:
        import httpx

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "slicevos.cli.label", *args,
                                      "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.base, self.token = self._wait_for_url(wait_s)
        self.url = f"{self.base}/?token={self.token}"
        self.client = httpx.Client(base_url=self.base, headers={TOKEN_HEADER: self.token},
                                   timeout=wait_s)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _wait_for_url(self, wait_s: float) -> tuple[str, str]:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.output.append(line)
            if match := URL.search(line):
                return match.group(1), match.group(2)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"slicevos-label printed no URL: {''.join(self.output)[-2000:]}")

    def finish(self, sig: int, wait_s: float = 180.0) -> str:
        """Send ``sig``, wait for the exit, return everything it printed."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=wait_s)
        time.sleep(0.1)  # let the reader thread drain the pipe
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)
