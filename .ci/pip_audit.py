"""`make test`'s dependency audit: pip-audit over the installed environment, failing loudly.

Passes only when every installed dependency (Gate itself, editable, aside) was audited and
none has a known vulnerability, or is listed in .ci/pip-audit-unaudited.txt (reviewed by hand,
with the reason). Fails with what to do when:

- a dependency has a known vulnerability: raise its pin in pyproject.toml to a fixed version;
- PyPI cannot be reached: CI needs https://pypi.org for this step and never passes without it;
- a dependency could not be audited and is not in the reviewed list.

pip-audit asks PyPI for each installed version's record (/pypi/NAME/VERSION/json). Where PyPI
has none (this network's PyPI serves project records only), the project record is used when
the installed version is PyPI's latest: its `vulnerabilities` are that release's.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

HERE = Path(__file__).resolve().parent
REVIEWED = HERE / "pip-audit-unaudited.txt"
PYPI = "https://pypi.org/pypi/{name}/json"
TIMEOUT_S = 30
# A lock is refreshed on purpose (`make lock`), not every day: a locked release that PyPI has
# superseded cannot be audited here (PyPI serves no per-version record on this network), and
# fails the audit only once its successor is older than this. The build never breaks by the
# calendar on the day of an upstream release, and an unaudited pin never stays for long.
REFRESH_DAYS = 30


class Unreachable(RuntimeError):
    """PyPI did not answer."""


def fail(text: str) -> int:
    print(f"pip-audit: FAILED: {text}", file=sys.stderr)
    return 1


def run_pip_audit() -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off",
           "--format", "json", "--timeout", str(TIMEOUT_S)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise Unreachable(last[0][:300]) from None
    deps: list[dict[str, Any]] = report["dependencies"]
    return deps


def project_record(name: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(PYPI.format(name=name), timeout=TIMEOUT_S) as resp:
            record: dict[str, Any] = json.load(resp)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise Unreachable(f"{PYPI.format(name=name)}: {err}") from err
    return record


def superseded_days(record: dict[str, Any], version: str) -> int:
    """Days since PyPI first had a release after `version` (its oldest successor's upload)."""
    releases: dict[str, list[dict[str, Any]]] = record.get("releases") or {}
    mine = Version(version)
    uploads = [
        datetime.fromisoformat(f["upload_time_iso_8601"].replace("Z", "+00:00"))
        for v, files in releases.items()
        if _newer(v, mine)
        for f in files
        if f.get("upload_time_iso_8601")
    ]
    if not uploads:
        return 0
    return (datetime.now(UTC) - min(uploads)).days


def _newer(text: str, mine: Version) -> bool:
    try:
        v = Version(text)
    except InvalidVersion:
        return False
    return v > mine and not v.is_prerelease


def reviewed() -> set[str]:
    lines = REVIEWED.read_text().splitlines() if REVIEWED.exists() else []
    return {line.split("#", 1)[0].strip().lower() for line in lines} - {""}


def main() -> int:
    print("pip-audit: auditing the installed dependencies against PyPI...", flush=True)
    try:
        deps = run_pip_audit()
        skipped = []
        for dep in deps:
            found = re.search(r"\(([^()]+)\)$", str(dep.get("skip_reason", "")))
            if found and "not found on PyPI" in dep["skip_reason"]:
                skipped.append((str(dep["name"]), found.group(1)))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            names = [name for name, _ in skipped]
            records = dict(zip(skipped, pool.map(project_record, names), strict=True))
    except Unreachable as err:
        return fail(
            f"PyPI's vulnerability records could not be reached ({err}). This step needs "
            "https://pypi.org; fix the network or proxy and run `make test` again (it never "
            "passes without the audit)."
        )
    vulnerable = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    audited = sum(1 for d in deps if "version" in d)
    unaudited = []
    for (name, version), record in records.items():
        if record["info"]["version"] == version:
            audited += 1
            vulnerable += [(name, version, v) for v in record.get("vulnerabilities") or []]
        else:
            unaudited.append((name, version, record["info"]["version"]))
    if vulnerable:
        for name, version, v in vulnerable:
            fixes = ", ".join(v.get("fix_versions") or v.get("fixed_in") or []) or "none yet"
            print(f"  {name} {version}: {v.get('id')} (fixed in: {fixes})", file=sys.stderr)
        return fail(
            f"{len(vulnerable)} known vulnerabilities: raise the pin in pyproject.toml (or add "
            "one for a transitive dependency) to a fixed version, then `make install`."
        )
    ok = reviewed()
    unlisted = [u for u in unaudited if f"{u[0]}=={u[1]}".lower() not in ok]
    overdue = []
    for name, version, latest in unaudited:
        if (name, version, latest) not in unlisted:
            note = "reviewed"
        else:  # the lock holds a release PyPI has since superseded: how long ago?
            days = superseded_days(records[(name, version)], version)
            note = f"superseded {days} days ago; NOT reviewed"
            if days > REFRESH_DAYS:
                overdue.append(name)
        print(f"  unaudited: {name} {version} (PyPI's latest {latest}; {note})")
    if overdue:
        return fail(
            f"the lock holds versions superseded more than {REFRESH_DAYS} days ago, which PyPI "
            f"keeps no vulnerability record for ({', '.join(overdue)}): run `make lock`, then "
            "`make test`, and commit uv.lock; or check them by hand (https://osv.dev) and list "
            f"them as name==version in {REVIEWED.relative_to(HERE.parent)} with the reason."
        )
    if unlisted:
        print(
            f"pip-audit: {len(unlisted)} locked versions were superseded lately; refresh the "
            f"lock (`make lock`) within {REFRESH_DAYS} days of their successor's release"
        )
    print(
        f"pip-audit: clean: {audited} dependencies audited, 0 known vulnerabilities; "
        f"{len(unaudited)} unaudited and reviewed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
