"""MkDocs hook: the reference pages generated from the code, and a nav that skips absent pages.

- `settings.md`: every GATE_* variable of `gate.settings.ENV` with its default and range (from
  `gate.settings`) and its meaning (from `gate.settings_doc`), so the table cannot drift.
- `api.md`: every route of the OpenAPI document `gate.api.routes.openapi_document()` serves at
  `/openapi.json` (role, body fields, query parameters, every status), and every error code of
  `gate.errors`.
- The nav in mkdocs.yml may name pages other branches are still writing: an entry whose file is
  neither in docs/ nor generated here is dropped from the nav (and logged), so `--strict` fails
  on a broken link inside a page, never on a page that has not landed yet. The landing page's
  `<!-- pages -->` line becomes the list of the pages this build has, from that same nav.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from gate.errors import GateError

log = logging.getLogger("mkdocs.hooks.reference")

GENERATED = ("settings.md", "api.md")


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    docs = Path(config["docs_dir"])
    present = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")} | set(GENERATED)
    config["nav"] = _keep_present(config["nav"], present)
    return config


def _keep_present(nav: list[Any], present: set[str]) -> list[Any]:
    kept: list[Any] = []
    for entry in nav:
        title, target = next(iter(entry.items())) if isinstance(entry, dict) else (None, entry)
        if isinstance(target, list):
            children = _keep_present(target, present)
            if children:
                kept.append({title: children})
        elif "://" in target or target in present:
            kept.append(entry)
        else:
            log.info("nav: %s is not in docs/ yet; left out of this build", target)
    return kept


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return markdown.replace("<!-- pages -->", "\n".join(_page_list(config["nav"], 0)))


def _page_list(nav: list[Any], depth: int) -> list[str]:
    lines: list[str] = []
    for entry in nav:
        title, target = next(iter(entry.items())) if isinstance(entry, dict) else (entry, entry)
        if isinstance(target, list):
            lines.append(f"{'    ' * depth}- {title}")
            lines += _page_list(target, depth + 1)
        elif target != "index.md":
            lines.append(f"{'    ' * depth}- [{title}]({target})")
    return lines


def on_files(files: Files, config: MkDocsConfig) -> Files:
    pages = {"settings.md": settings_page(), "api.md": api_page()}
    for name, text in pages.items():
        files.append(File.generated(config, name, content=text))
    return files


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_page() -> str:
    from gate import settings, settings_doc

    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(settings.Settings)}
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable, or the `gate serve` flag beside it (a flag",
        "wins over the variable). An empty value counts as unset. An invalid value stops",
        "`gate serve` with one line naming the variable and what it expects.",
        "",
        "This page is generated from `gate/settings.py` (names, defaults, ranges) and",
        "`gate/settings_doc.py` (meanings) each time the site is built.",
        "",
        "| Variable | Flag | Default | Allowed | Meaning |",
        "|---|---|---|---|---|",
    ]
    for name, var in settings.ENV.items():
        default = defaults[name]
        if default is None:
            shown = "unset"
        elif name == "signup_credit_micros":
            shown = f"{default / 1_000_000:.2f}"
        elif isinstance(default, bool):
            shown = "1" if default else "0"
        else:
            shown = str(default)
        low_high = settings._INT_FIELDS.get(name)
        allowed = f"{low_high[0]} to {low_high[1]}" if low_high else ""
        meaning = settings_doc.MEANING[var]
        flag = "--" + name.replace("_", "-").replace("-micros", "-usd")  # as gate/cli.py
        lines.append(f"| `{var}` | `{flag}` | {_cell(shown)} | {allowed} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def _type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        kinds = [_type_of(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) + " or null"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "maximum", "maxLength") if k in schema]
    if "|" not in schema.get("pattern", "|"):  # a table cell cannot hold a pipe in a pattern
        bounds.append(f"pattern `{schema['pattern']}`")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


# For the error classes of gate/errors.py that carry no docstring of their own.
_ERROR_MEANING = {
    "bad_request": "the request is malformed (the message says which part)",
    "validation_error": "a field is missing, of the wrong type or out of range; `field` names it",
    "invalid_json": "the body is not a JSON object",
    "invalid_number": "a number is not E.164 after normalisation (see the design contract, §3)",
    "invalid_cursor": "a `cursor` that no page handed out",
    "unauthorized": "no key, an unknown, revoked or expired key",
    "payment_required": "money is missing (one of the codes below)",
    "insufficient_balance": "the available money does not cover the start, charge or debit; "
    "the body carries `balance_usd`, `required_usd`, `available_usd`",
    "payment_declined": "the payment provider declined the card",
    "workspace_suspended": "the wallet stayed at or below zero past its grace: top up",
    "forbidden": "the key's role may not do this",
    "not_found": "no such thing for this key (another tenant's id also answers 404)",
    "method_not_allowed": "the path exists, the method does not",
    "conflict": "the state forbids this (the message says which)",
    "idempotency_key_in_progress": "the first request with this key is still running: retry",
    "idempotency_key_reused": "the same `Idempotency-Key` or `charge_id` with another body",
    "invalid_state": "the call is not in a state for this (ended, not ringing, not live)",
    "payload_too_large": "the body is larger than the route accepts",
    "unprocessable": "well-formed but not actionable",
    "concurrency_limit": "the workspace has `max_concurrent_calls` live calls; nothing reserved",
    "unavailable": "a dependency is away; retry shortly",
}


def _error_rows(root: type[GateError]) -> list[tuple[int, str, str, str]]:
    """(status, code, class name, meaning) of every error class, by status and code."""
    rows = []
    todo = [root]
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        meaning = (cls.__doc__ or "").strip().split("\n\n")[0]
        if cls is root:
            meaning = "an unexpected failure; logged with its trace"
        elif not meaning:
            meaning = _ERROR_MEANING.get(cls.code, "")
        rows.append((cls.status, cls.code, cls.__name__, meaning))
    return sorted(set(rows))


def api_page() -> str:
    from gate import errors
    from gate.api.routes import ROUTES, openapi_document

    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    rows = _error_rows(errors.GateError)
    codes: dict[int, list[str]] = {}
    for status, code, _, _ in rows:
        codes.setdefault(status, []).append(code)
    roles = {(r.method.lower(), r.path): r.role for r in ROUTES}
    out = [
        "# API reference",
        "",
        f"Gate {doc['info']['version']}. Generated, each time the site is built, from the OpenAPI",
        "document a running Gate serves at `GET /openapi.json` (`gate/api/routes.py`), which is",
        "built from the same schemas that validate requests. Every error answers",
        '`{"error": {"code": "...", "message": "...", ...details}}`; the codes are',
        "[listed below](#error-codes).",
        "",
        "A role admits that role and the ones above it (`platform` > `org_admin` > `admin` >",
        "`agent`); `switch` admits only a switch key (see",
        "[the design contract](design.md#s9)).",
        "",
        "## Routes",
        "",
        "| Method | Path | Role | What |",
        "|---|---|---|---|",
    ]
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    for path, method, op in ops:
        role = roles.get((method, path))
        anchor = op["operationId"].replace("_", "-")
        out.append(
            f"| {method.upper()} | [`{path}`](#{anchor}) | {f'`{role}`' if role else 'none'} "
            f"| {_cell(op['summary'])} |"
        )
    for path, method, op in ops:
        role = roles.get((method, path))
        out += ["", f"### `{method.upper()} {path}` {{#{op['operationId'].replace('_', '-')}}}", ""]
        out.append(op["summary"] + ".")
        out.append("")
        out.append(f"Role: {op.get('description', 'none: no key needed.')}")
        params = op.get("parameters", [])
        if params:
            out += ["", "| Parameter | In | Type | Meaning |", "|---|---|---|---|"]
            for p in params:
                req = " (required)" if p.get("required") else ""
                out.append(
                    f"| `{p['name']}` | {p['in']}{req} | {_cell(_type_of(p['schema']))} "
                    f"| {_cell(p.get('description', ''))} |"
                )
        body = op.get("requestBody")
        if body:
            ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            schema = schemas[ref]
            required = set(schema.get("required", []))
            out += ["", f"Body (`{ref}`, JSON):", "", "| Field | Type | Meaning |", "|---|---|---|"]
            for name, prop in schema.get("properties", {}).items():
                req = " (required)" if name in required else ""
                meaning = prop.get("description", "")
                if "default" in prop and prop["default"] is not None:
                    meaning = f"{meaning} default `{json.dumps(prop['default'])}`".strip()
                out.append(f"| `{name}`{req} | {_cell(_type_of(prop))} | {_cell(meaning)} |")
        out += ["", "| Status | Meaning |", "|---|---|"]
        for status, answer in op["responses"].items():
            meaning = answer.get("description")
            if meaning is None:  # the errors every route of its kind shares: their codes
                listed = ", ".join(f"`{c}`" for c in codes.get(int(status), []))
                meaning = f"an error of this status ({listed})" if listed else "error"
            out.append(f"| {status} | {_cell(meaning)} |")
    out += [
        "",
        "## Error codes",
        "",
        "Generated from the exception classes of `gate/errors.py`.",
        "",
        "| Status | Code | Class | Meaning |",
        "|---|---|---|---|",
    ]
    for status, code, name, meaning in rows:
        out.append(f"| {status} | `{code}` | `{name}` | {_cell(meaning)} |")
    out += [
        "",
        "Below the application, the connection layer (`gate/api/protocol.py`) answers a request",
        "whose headers take longer than `GATE_HEADER_TIMEOUT_S` with `408 request_timeout`, and",
        "a request it cannot parse with `400 bad_request`, in the same error shape.",
    ]
    return "\n".join(out) + "\n"
