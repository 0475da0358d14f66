"""Ray nodes the tests start on loopback and always stop, shared by the Ray and README tests. (A plain module:
`conftest` is an ambiguous import name.)

Each node is a `ray start --block` in a session of its own: its raylet, agents and worker processes all
carry that session id, so a test can stop exactly one node's processes, by id, without touching any other
Ray on the machine.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only: no token files in $HOME
NODE_OPTIONS = ["--num-cpus=1", "--object-store-memory=100000000", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats", "--include-log-monitor=false", "--block"]
STARTED = "Ray runtime started"


@dataclass
class RayNode:
    process: subprocess.Popen  # `ray start --block`, the leader of a session that holds all of the node's processes
    temp_dir: Path

    def holds(self, pid: int) -> bool:
        try:
            return os.getsid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def pids(self) -> list[int]:
        """The node's live processes (zombies excluded: they are gone, only not yet reaped)."""
        live = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state != "Z" and self.holds(int(entry)):
                live.append(int(entry))
        return live

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM to `ray start`, which stops the node's processes; SIGKILL whatever is left; remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
        deadline = time.monotonic() + 15
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()
        self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_node(*args: str, env: dict[str, str]) -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = temp_dir / "start.log"
    process = subprocess.Popen([str(RAY), "start", *args, *NODE_OPTIONS, f"--temp-dir={temp_dir}"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(process, temp_dir)
    deadline = time.monotonic() + 180
    while STARTED not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            output = log.read_text()
            node.stop()
            raise RuntimeError(f"ray start {' '.join(args)} did not start: {output[-2000:]}")
        time.sleep(0.2)
    return node
