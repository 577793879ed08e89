"""Running wrk with loadtests/wrk/requests.lua and reading what it measured."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).parent / "wrk" / "requests.lua"


@dataclass
class WrkResult:
    name: str
    requests: int
    seconds: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    exhausted: bool = False
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used by each process of the server

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def count(self, *statuses: str) -> int:
        """Responses whose status (or status:code) starts with any of ``statuses``."""
        return sum(n for key, n in self.statuses.items() if key.startswith(statuses))

    @property
    def ok_rate(self) -> float:
        """2xx responses per second (a confirmed booking is a 201)."""
        return self.count("2") / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1), "ok_rate": round(self.ok_rate, 1)}


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    name: str,
    base_url: str,
    requests_file: Path,
    *,
    duration: int,
    threads: int,
    connections: int,
    workdir: Path,
    timeout_seconds: int = 10,
) -> WrkResult:
    """Replay ``requests_file`` against ``base_url`` for at most ``duration`` seconds."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    result_file = workdir / f"wrk-{name}.json"
    result_file.unlink(missing_ok=True)
    args = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_seconds}s",
        "-s", str(SCRIPT), base_url, "--", str(requests_file), str(result_file), str(threads),
    ]  # fmt: skip
    # wrk itself stops at -d; the timeout only guards against a wedged wrk.
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode or not result_file.exists():
        raise RuntimeError(f"wrk {name} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    raw = json.loads(result_file.read_text())
    latency = {key: value / 1000 for key, value in raw["latency_us"].items()}
    result = WrkResult(
        name=name,
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        latency_ms=latency,
        statuses={key: int(value) for key, value in raw["statuses"].items()},
        socket_errors={key: int(value) for key, value in raw["errors"].items() if key != "status"},
        exhausted=bool(raw.get("exhausted")),
    )
    if result.exhausted:
        result.notes.append("the request file ran out before the time was up: the rate is a lower bound")
    return result
