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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REVIEWED = HERE / "pip-audit-unaudited.txt"
PYPI = "https://pypi.org/pypi/{name}/json"
TIMEOUT_S = 30


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
    for name, version, latest in unaudited:
        note = "reviewed" if (name, version, latest) not in unlisted else "NOT reviewed"
        print(f"  unaudited: {name} {version} (PyPI's latest {latest}; {note})")
    if unlisted:
        return fail(
            "PyPI has no vulnerability record for these installed versions: upgrade them to "
            "PyPI's latest, or check them by hand (https://osv.dev) and list them as "
            f"name==version in {REVIEWED.relative_to(HERE.parent)} with the reason."
        )
    print(
        f"pip-audit: clean: {audited} dependencies audited, 0 known vulnerabilities; "
        f"{len(unaudited)} unaudited and reviewed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
