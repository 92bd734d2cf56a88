"""`python -m loadtest.guard`: fail when call starts lost speed against the bare handler.

The CI step of issue 22 (`make checks` runs it after pytest). It starts this checkout's
`gate serve` (its private redis-server) and the bare aiohttp + uvloop + orjson handler, and
measures them in pairs, side by side, with `wrk -t1 -c50` posting `POST /v1/calls`
(loadtest/wrkpair.py, whose checks make every counted start a real 201 that holds money).
The figure is the median over the pairs of Gate's starts/s over the bare handler's in the
same pair. It must not fall more than 25 % below the figure recorded in
`loadtest/guard.json`; a failing attempt is retried twice (a noisy moment on a shared
machine should not block a landing), each retry's pairs pooled with the ones before (so
three tries are more evidence, not three chances for a slow build to get one lucky
median), and the figures are printed either way. A measurement
with more than 0.1 % non-2xx answers is invalid, not fast: the guard fails on it at once.

Recording a new figure is a deliberate change: edit `loadtest/guard.json` (or run with
`--record`) and say why in the commit. `--slow-us N` measures a copy of this tree whose
start handler spins N µs of CPU first: the self-test that the guard catches a slower build.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from loadtest import wrkpair
from loadtest.procs import BareServer

RECORD = Path(__file__).with_name("guard.json")
ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.25  # the ratio may fall this much below the record before the guard fails
ATTEMPTS = 3  # the first and two retries
# Where the slowed copy spins: the first line of the start handler's body.
_SLOW_AT = "    arrival = time.time_ns() // 1_000_000\n"
_SLOW = (
    "    _spin_until = time.thread_time_ns() + {ns}  # loadtest.guard --slow-us: CPU, not wall\n"
    "    while time.thread_time_ns() < _spin_until:\n"
    "        pass\n"
)


@dataclass(frozen=True)
class Attempt:
    ratios: list[float]
    cpu_ratio: float | None
    invalid: list[str]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 0.0


def recorded(path: Path = RECORD) -> float:
    return float(orjson.loads(path.read_bytes())["ratio"])


def slowed_copy(slow_us: int, into: Path) -> Path:
    """A copy of this tree's gate package (and its Lua) whose call start spins `slow_us` µs."""
    shutil.copytree(ROOT / "gate", into / "gate")
    shutil.copytree(ROOT / "lua", into / "lua")
    handler = into / "gate" / "api" / "calls.py"
    text = handler.read_text()
    if text.count(_SLOW_AT) != 1:
        raise SystemExit(f"guard --slow-us: {handler} no longer has {_SLOW_AT.strip()!r} once")
    handler.write_text(text.replace(_SLOW_AT, _SLOW_AT + _SLOW.format(ns=slow_us * 1000)))
    return into


async def attempt(
    target: wrkpair.GateTarget, bare: BareServer, pairs: int, seconds: int, workdir: Path
) -> Attempt:
    pair = await wrkpair.measure_pair([target], bare, pairs, seconds, 50, workdir)
    s = wrkpair.summary(pair, [target.name])
    invalid = [f"{m.target} round {m.round + 1}: {'; '.join(m.problems)}" for m in pair.invalid]
    return Attempt(pair.ratios(target.name), s[target.name].get("cpu_ratio"), invalid)


async def run(a: argparse.Namespace) -> int:
    wrkpair.wrk_path()
    floor = round(a.ratio * (1 - TOLERANCE), 3)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guard-") as tmp:
        src = slowed_copy(a.slow_us, Path(tmp)) if a.slow_us else None
        name = f"slowed{a.slow_us}us" if a.slow_us else "gate"
        bare = await BareServer.start(a.out / "guard-bare.log")
        try:
            [target] = await wrkpair.start_targets([(name, src)], 10, a.out)
            try:
                pooled: list[float] = []  # a retry adds evidence, not another lottery ticket
                for n in range(1, ATTEMPTS + 1):
                    got = await attempt(target, bare, a.pairs, a.seconds, Path(tmp))
                    pooled += got.ratios
                    ratio = statistics.median(pooled) if pooled else 0.0
                    verdict = "INVALID" if got.invalid else "pass" if ratio >= floor else "too slow"
                    print(
                        f"guard attempt {n}/{ATTEMPTS}: Gate/bare starts/s, pairs "
                        f"{', '.join(f'{r:.3f}' for r in got.ratios)} (CPU ratio "
                        f"{got.cpu_ratio}); median of all {len(pooled)} pairs {ratio:.3f}, "
                        f"recorded {a.ratio:.3f}, floor {floor:.3f}: {verdict}"
                    )
                    if got.invalid:
                        print("invalid measurements (errors are not speed):", *got.invalid,
                              sep="\n  ")  # fmt: skip
                        return 1
                    if a.record:
                        return record(got)
                    if ratio >= floor:
                        return 0
            finally:
                await target.close()
        finally:
            bare.stop()
    print(
        f"loadtest.guard: call starts fell more than {TOLERANCE:.0%} below the recorded "
        f"{a.ratio:.3f} of the bare handler in {ATTEMPTS} attempts. Find the change that "
        "cost it (`python -m loadtest.wrkpair --against main=DIR`, docs/performance.md); if "
        "the cost is deliberate, record the new figure in loadtest/guard.json and say why in "
        "the commit."
    )
    return 1


def record(got: Attempt) -> int:
    """Write the figure measured, to be committed with its reason."""
    body = {
        "ratio": round(got.ratio, 3),
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "pairs": got.ratios,
        "why": "set by `python -m loadtest.guard --record`: say why in the commit",
    }
    RECORD.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"recorded {body['ratio']} in {RECORD}")
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.guard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--pairs", type=int, default=3, help="bare/Gate pairs an attempt (3)")
    p.add_argument("--seconds", type=int, default=2, help="each wrk run, whole seconds (2)")
    p.add_argument("--ratio", type=float, help="compare with this, not guard.json's figure")
    p.add_argument("--slow-us", type=int, default=0, help="self-test: spin N µs in each start")
    p.add_argument("--record", action="store_true", help="write the measured figure")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gate-guard")
    a = p.parse_args(argv)
    if a.ratio is None:
        a.ratio = recorded()
    return a


def main(argv: list[str] | None = None) -> int:
    import uvloop

    a = parse(argv)
    try:
        return uvloop.run(run(a))
    except wrkpair.BenchError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
