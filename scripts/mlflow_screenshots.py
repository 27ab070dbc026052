"""Screenshots of a sweep's MLflow views, taken in headless Chromium: the check that the UI
``python -m parcae.ui`` opens on shows what the README says it shows.

    python scripts/mlflow_screenshots.py reports/smoke --out docs

Starts ``python -m parcae.ui`` on the reports folder, drives Chromium (Debian package
``chromium``) over its DevTools protocol, waits until the runs table lists the sweep's runs
and the chart view has drawn its scatter, and saves ``mlflow_runs.png`` and
``mlflow_charts.png``. Exits 1, saying which, when a view does not show what it should.
MLflow's assistant panel, which opens by itself on a first visit, is kept closed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

SIZE = (1600, 1000)
#: Set before MLflow's scripts run: its assistant counts as already shown.
NO_ASSISTANT = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"


class DevTools:
    """The few DevTools-protocol calls needed, over a plain WebSocket (RFC 6455) client."""

    def __init__(self, ws_url: str) -> None:
        url = urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"DevTools refused the connection: {head[:200]!r}")
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            message = json.loads(self._receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def _send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        size = (struct.pack("!B", 0x80 | n) if n < 126 else
                struct.pack("!BH", 0x80 | 126, n) if n < 1 << 16 else
                struct.pack("!BQ", 0x80 | 127, n))
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(b"\x81" + size + mask + body)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            out += chunk
        return out

    def _receive(self) -> bytes:
        message = b""
        while True:
            first, second = self._exactly(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exactly(8))[0]
            message += self._exactly(n)
            if first & 0x80:  # the final fragment
                return message


def start_ui(reports: Path, log: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """``python -m parcae.ui`` on ``reports``; returns it and the URLs it printed by kind."""
    out = log.open("w")
    ui = subprocess.Popen([sys.executable, "-m", "parcae.ui", str(reports)], stdout=out,
                          stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and ui.poll() is None:
        text = log.read_text()
        if "Ctrl-C stops it" in text:
            time.sleep(0.5)  # the URL lines follow in the same write
            found = re.findall(r"^\s+(runs|charts|sweep run)\s+(http\S+)$", log.read_text(), re.M)
            return ui, dict(found)
        time.sleep(0.5)
    stop(ui)
    raise RuntimeError(f"parcae.ui did not start:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # parcae.ui stops its server on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_browser(profile: Path) -> tuple[subprocess.Popen, DevTools]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    log = profile.parent / "chromium.log"
    with log.open("w") as err:  # a file, not a pipe: Chromium's chatter never blocks it
        browser = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={SIZE[0]},{SIZE[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and browser.poll() is None:
        found = re.search(r"DevTools listening on (ws://\S+)", log.read_text(errors="replace"))
        if found:
            port = urlparse(found.group(1)).port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                pages = json.loads(r.read())
            page = next(p for p in pages if p["type"] == "page")
            return browser, DevTools(page["webSocketDebuggerUrl"])
        time.sleep(0.2)
    browser.kill()
    browser.wait()
    raise RuntimeError(f"chromium did not open its DevTools port:\n{log.read_text()[-2000:]}")


def shoot(tools: DevTools, url: str, ready: str, path: Path, wait_s: float = 240) -> None:
    """Open ``url``, wait until the JavaScript condition ``ready`` holds, save a PNG."""
    tools.call("Page.navigate", url=url)
    deadline = time.monotonic() + wait_s
    while not tools.evaluate(ready):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the page never showed what it should ({ready})")
        time.sleep(1)
    time.sleep(3)  # let charts finish drawing
    shot = tools.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, help="a sweep's reports folder")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient  # after parsing: slow to import

    sweep = json.loads((args.reports / "sweep.json").read_text())
    client = MlflowClient(sweep["tracking_uri"])
    parent = client.get_run(sweep["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted({r.info.run_name for r in children})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parcae-shots-") as tmp:
        ui, urls = start_ui(args.reports, Path(tmp) / "ui.log")
        browser = None
        try:
            browser, tools = start_browser(Path(tmp) / "profile")
            tools.call("Page.enable")
            tools.call("Page.addScriptToEvaluateOnNewDocument", source=NO_ASSISTANT)
            tools.call("Emulation.setDeviceMetricsOverride", width=SIZE[0], height=SIZE[1],
                       deviceScaleFactor=1, mobile=False)
            listed = " && ".join(f"document.body.innerText.includes({json.dumps(n)})"
                                 for n in names)
            shoot(tools, urls["runs"], listed, args.out / "mlflow_runs.png")
            drawn = f"{listed} && document.querySelectorAll('.js-plotly-plot').length > 0"
            shoot(tools, urls["charts"], drawn, args.out / "mlflow_charts.png")
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if browser is not None:
                browser.kill()
                browser.wait()
            stop(ui)
    print(f"wrote {args.out / 'mlflow_runs.png'} and {args.out / 'mlflow_charts.png'} "
          f"({len(names)} runs: {', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
