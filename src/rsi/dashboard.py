"""`rsi serve`: a live dashboard of a research (FastAPI and uvicorn, an optional extra: `rsi[serve]`).

It reads the ledger read-only, one short transaction per request, so it may run beside `rsi run` and never
slows or blocks it. The page is one HTML file with its script (no outside library, works offline); it asks
`/api/version` every second and redraws when the ledger changed. It shows what the report shows: held-out
figures of the baseline and the kept experiments only, and none of a run's environment or the task's
settings. Bound to anything but loopback it asks for a token (`?token=` once, then a cookie, or a bearer
header); with `--cert` and `--key` it speaks HTTPS, so that the token does not cross the network in clear.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
import ssl
from importlib import resources
from pathlib import Path
from typing import Any

from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.report import read

COOKIE = "rsi_token"
RUN_FIELDS = ("id", "kind", "seed", "status", "metric", "reason", "duration_s", "peak_memory_mb")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(ledger: Ledger) -> str:
    """Changes whenever an experiment or a run is added or finished."""
    e = ledger.db.execute("SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0), COUNT(verdict) FROM experiments")
    r = ledger.db.execute("SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0) FROM runs")
    return ":".join(str(x) for x in (*e.fetchone(), *r.fetchone()))


def state(ledger: Ledger) -> dict[str, Any]:
    """The research in one snapshot: `rsi status --json`'s summary and the report's rows (no diffs)."""
    status, rows = read(ledger)
    tokens = ledger.db.execute("SELECT proposer, SUM(tokens_in), SUM(tokens_out) FROM calls GROUP BY proposer")
    for name, tin, tout in tokens.fetchall():
        if name in status["proposers"]:
            status["proposers"][name].update(tokens_in=tin or 0, tokens_out=tout or 0)
    by_id = {j["id"]: j for j in status["experiments"]}
    status["experiments"] = [
        {
            "id": r.id,
            "parent": by_id[r.id]["parent"],
            "proposer": r.proposer,
            "hypothesis": r.hypothesis,
            "metric": r.metric,
            "sd": r.sd,
            "runs": r.runs,
            "status": r.status,
            "verdict": r.verdict,
            "reason": r.reason,
            "holdout": r.holdout,  # the baseline's and kept ones' only, as in the report
            "group": r.group,
            "reverted": r.reverted,
            "ci": r.ci,
            "flag": r.flag,
            "duration_s": r.duration_s,
            "commit": by_id[r.id]["commit"],
        }
        for r in rows
    ]
    return status


def experiment(ledger: Ledger, exp_id: int) -> dict[str, Any] | None:
    """One experiment: its row, diff, knob values, every run with seed, metric and log tails, its children."""
    everything = state(ledger)
    row = next((r for r in everything["experiments"] if r["id"] == exp_id), None)
    e = ledger.experiment(exp_id)
    if row is None or e is None:
        return None
    champion = row["group"] == "champion"
    runs = [
        {**{k: getattr(r, k) for k in RUN_FIELDS}, "stdout_tail": r.stdout_tail, "stderr_tail": r.stderr_tail}
        for r in e.runs
        if champion or r.kind != "holdout"  # held-out figures only where the report shows them
    ]
    children = [r["id"] for r in everything["experiments"] if r["parent"] == exp_id]
    return {**row, "diff": e.diff, "params": e.params, "runs": runs, "children": children}


def create_app(root: Path, token: str | None = None, secure: bool = False) -> Any:
    """The web app over the ledger under `root`; with `token`, every request must carry it (its cookie only
    over HTTPS when `secure`)."""
    try:
        from fastapi import FastAPI, HTTPException, Request, Response
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        raise UserError("rsi serve needs FastAPI and uvicorn: pip install 'rsi[serve]'") from None
    path = root / ".rsi" / "ledger.sqlite"
    page = resources.files("rsi").joinpath("templates/dashboard.html").read_text(encoding="utf-8")
    app = FastAPI(title="rsi", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if token is None:
            return await call_next(request)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or bearer
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "a token is needed: open the address rsi serve printed"}, 401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return response

    def ledger() -> Ledger | None:
        return Ledger(path, readonly=True) if path.exists() else None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/version")
    def version() -> dict[str, str]:
        opened = ledger()
        if opened is None:
            return {"version": "none"}
        try:
            return {"version": fingerprint(opened)}
        finally:
            opened.close()

    @app.get("/api/state")
    def whole() -> dict[str, Any]:
        opened = ledger()
        if opened is None:
            return {"waiting": True, "root": root.name, "experiments": []}
        try:
            return state(opened)
        finally:
            opened.close()

    @app.get("/api/experiments/{exp_id}")
    def one(exp_id: int) -> dict[str, Any]:
        opened = ledger()
        found = None
        if opened is not None:
            try:
                found = experiment(opened, exp_id)
            finally:
                opened.close()
        if found is None:
            raise HTTPException(404, f"no experiment {exp_id}")
        return found

    return app


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Both or neither, readable, and a key that belongs to the certificate: one line otherwise."""
    if (cert is None) != (key is None):
        raise UserError("--cert and --key go together: the certificate (PEM) and its private key")
    if cert is None or key is None:
        return
    for given, name in ((cert, "--cert"), (key, "--key")):
        if not given.exists():
            raise UserError(f"{name} {given}: no such file")
        if not given.is_file():
            raise UserError(f"{name} {given}: not a file")

    def encrypted() -> str:
        raise UserError(f"--key {key} is encrypted: give it without a passphrase (openssl pkey -in it -out new.key)")

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as e:
        why = "the key does not belong to the certificate" if e.reason == "KEY_VALUES_MISMATCH" else None
        raise UserError(f"--cert {cert}, --key {key}: {why or 'not a PEM certificate and its PEM key'}") from None
    except OSError as e:
        raise UserError(f"cannot read --cert {cert} or --key {key}: {e.strerror or e}") from None


def serve(
    root: Path, host: str, port: int, token: str | None, cert: Path | None = None, key: Path | None = None
) -> None:
    """Runs the dashboard until Ctrl-C. Off loopback a token is required; one is made if none is given. With
    `cert` and `key`, over HTTPS."""
    if not (root / "rsi.toml").exists() and not (root / ".rsi").is_dir():
        raise UserError(f"{root} holds no rsi task (no rsi.toml): give the task's folder")
    check_tls(cert, key)
    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(18)
    _check_bind(host, port)
    app = create_app(root, token, secure=cert is not None)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if cert is not None else "http"
    where = f"{scheme}://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"rsi: dashboard of {root.resolve().name} at {where} (Ctrl-C stops it)", flush=True)
    if token and cert is None and not is_loopback(host):
        print("rsi: plain HTTP: the token crosses the network in clear; --cert and --key serve HTTPS", flush=True)
    certfile, keyfile = (str(cert), str(key)) if cert is not None else (None, None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=certfile, ssl_keyfile=keyfile)
    except SystemExit as e:  # uvicorn exits when it cannot bind
        raise UserError(f"cannot serve on {host}:{port} (in use, or not an address of this machine)") from e


def _check_bind(host: str, port: int) -> None:
    """Refuses, before printing where the dashboard is, an address it could not listen on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
