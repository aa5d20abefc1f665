"""`synthehr serve`: start the clinician web app (localhost only unless told otherwise)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from synthehr.errors import SynthEHRError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from synthehr.app.server import create_app
    except ModuleNotFoundError as e:
        raise SynthEHRError(f"the web app needs the 'app' extra ({e.name} is missing): "
                            "pip install 'synthehr[app]'") from None
    from synthehr.app.settings import Settings

    if not _is_loopback(args.host) and not args.token:
        print(f"synthehr serve: warning: listening on {args.host} without --token; anyone who can reach this "
              "machine can use the app", file=sys.stderr)
    settings = Settings(models=args.model, data=args.data, db_url=args.db, token=args.token, host=args.host,
                        port=args.port, data_dir=args.data_dir)
    if args.workers < 1:
        raise SynthEHRError(f"--workers must be at least 1, got {args.workers}")
    app = create_app(settings) if args.workers == 1 else None
    if app is None:
        from synthehr.app.store import open_store

        engine, _ = open_store(settings.db_url)  # migrate once, before the workers start
        engine.dispose()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    except OSError as e:
        raise SynthEHRError(f"cannot listen on {args.host}:{args.port} ({e.strerror})") from None
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")
    real = f"real data from {settings.data}" if settings.data else "no real data (synthetic patients only)"
    print(f"synthehr app: {len(settings.models)} model(s), {real}; feedback in {_safe_url(settings.db_url)}"
          + (f"; {args.workers} worker processes" if args.workers > 1 else ""))
    print(f"synthehr app listening on {url}", flush=True)
    if app is not None:
        _run(app, sock, args)
        return 0
    return _run_workers(settings, sock, args)


def _run(app, sock: socket.socket, args: argparse.Namespace) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _run_workers(settings, sock: socket.socket, args: argparse.Namespace) -> int:
    """N forked processes accept on one listening socket (the kernel spreads connections); each loads
    its own copy of the models. SIGTERM/SIGINT are passed on; returns when every worker has exited."""
    import os
    import signal

    from synthehr.app.server import create_app

    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                _run(create_app(settings), sock, args)
            except BaseException:  # noqa: BLE001 - report and leave with an error code
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum, _frame):
        for c in children:
            try:
                os.kill(c, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for c in children:
        while True:
            try:
                _, status = os.waitpid(c, 0)
                break
            except InterruptedError:
                continue
        worst = max(worst, os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 0)
    return worst


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the configured database"


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="start the clinician web app (reconstruct, scenarios, review, feedback)",
        description="Serve the clinician web app. Binds 127.0.0.1 unless --host says otherwise; real patient "
                    "rows are shown only when --data is given.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port; the URL is printed)")
    p.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                   help="trained model folder, or a folder of model folders (repeatable)")
    p.add_argument("--data", metavar="PREPARED_DIR",
                   help="prepared folder: enables real patients and fidelity against real rows")
    p.add_argument("--db", metavar="URL", help="feedback database URL (default: a SQLite file in the user data "
                                               "folder; PostgreSQL: postgresql+psycopg://user@host/db with the "
                                               "psycopg driver installed; or set SYNTHEHR_DB_URL)")
    p.add_argument("--token", help="require this token on every API call; prefer SYNTHEHR_APP_TOKEN (a command "
                                   "line is visible to other users of the machine)")
    p.add_argument("--data-dir", help="user data folder for the default database and the user rule file "
                                      "(default: $SYNTHEHR_DATA_DIR or ~/.local/share/synthehr)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (default 1; each loads the models; Linux/macOS)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=_cmd_serve)
