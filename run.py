"""Starts the server: ``python run.py [--host H] [--port P] [--processes N]``.

Loads the settings, raises the descriptor limit and sets the connection ceiling
(server/listener.py), starts the embedded store as a child process when no
MONGO_URI is set, builds the application, listens (HTTPS/WSS with TLS_CERT and
TLS_KEY; LISTEN_BACKLOG), and on SIGTERM or SIGINT stops accepting, lets in-flight requests
finish (bounded), closes the database client, stops the child store and exits 0.
If the child store dies, the server says so and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import ssl
import sys

from tornado.httpserver import HTTPServer
from tornado.web import Application

import settings as settings_module
from embedded_mongo.launcher import ChildStore
from handlers.app import make_app, max_body_size
from server.app import Services, tune_gc
from server.listener import Ceilings, Gate, listening_sockets, raise_descriptor_limit
from server.logs import configure, fields
from server.metrics import Metrics
from server.records import SchemaFileError
from server.supervisor import supervise
from server.timeouts import within

log = logging.getLogger("run")
DRAIN_SECONDS = 10.0  # how long in-flight requests may take to finish at shutdown
EXIT_STORE_DIED = 3


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Mini Programs need TLS 1.2 or newer
    context.load_cert_chain(cert, key)
    return context


def plan_descriptors(config: settings_module.Settings) -> Ceilings:
    """Raises the soft descriptor limit to the hard one and shares it out (logged);
    a MAX_CONNECTIONS the limit cannot hold is a SettingsError."""
    before, limit, hard = raise_descriptor_limit()
    try:
        ceilings = Ceilings.plan(limit, config.max_connections)
    except ValueError as exc:
        raise settings_module.SettingsError(f"MAX_CONNECTIONS={config.max_connections} is too high: {exc}; "
                                            "raise LimitNOFILE (ulimit -n) or lower it") from None
    log.info("descriptor limit", extra=fields(soft_before=before, soft=limit, hard=hard,
                                               max_connections=ceilings.max_connections,
                                               listen_backlog=config.listen_backlog))
    return ceilings


def listen(config: settings_module.Settings, app: Application, ceilings: Ceilings,
           reuse_port: bool = False, metrics: Metrics | None = None) -> tuple[HTTPServer, int]:
    """The HTTP server listening on HOST:PORT with LISTEN_BACKLOG, behind the
    connection ceiling; and the port (PORT=0 picks one)."""
    context = tls_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    server = HTTPServer(app, ssl_options=context,
                        max_body_size=max_body_size(config), idle_connection_timeout=75)
    sockets = listening_sockets(config.host, config.port, config.listen_backlog, reuse_port)
    Gate(server, ceilings, context, metrics).listen(sockets)
    return server, sockets[0].getsockname()[1]


async def wait_for_stop(child: ChildStore | None) -> int:
    """Waits for SIGTERM or SIGINT (exit code 0) or the child store's death (3)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0

    async def watch_store() -> None:
        nonlocal exit_code
        while child is not None:
            await asyncio.sleep(0.5)
            if not child.alive():
                log.error("the embedded store died; stopping", extra=fields(exit_code=child.proc.returncode
                                                                         if child.proc else None))
                print("the embedded store died; the server stops", file=sys.stderr, flush=True)
                exit_code = EXIT_STORE_DIED
                stop.set()
                return

    watcher = asyncio.create_task(watch_store())
    await stop.wait()
    watcher.cancel()
    return exit_code


async def shut_down(server: HTTPServer, services: Services) -> None:
    """Stops accepting, closes WebSockets, lets in-flight requests finish (bounded)."""
    log.info("shutting down", extra=fields(in_flight=services.in_flight))
    server.stop()  # stop accepting
    await services.shutdown()  # close WebSockets with 1001 once what was acknowledged is stored
    if not await services.drain(DRAIN_SECONDS):
        log.warning("requests still in flight at shutdown", extra=fields(in_flight=services.in_flight))
    await within(server.close_all_connections(), DRAIN_SECONDS)


async def serve(config: settings_module.Settings, ceilings: Ceilings, reuse_port: bool = False) -> int:
    """Serves until SIGTERM/SIGINT or the child store's death; the exit code.
    ``reuse_port``: a worker of ``--processes``, sharing the port (server/supervisor.py)."""
    child: ChildStore | None = None
    mongo_uri = config.mongo_uri
    if mongo_uri is None:
        child = ChildStore(os.path.join(config.data_dir, "db")).start()
        mongo_uri = child.uri
        log.info("embedded store started", extra=fields(port=child.port, dbpath=child.dbpath))
    app, services = make_app(config, mongo_uri)
    try:
        await services.start()
        tune_gc()
        server, port = listen(config, app, ceilings, reuse_port, services.metrics)
        scheme = "https" if config.tls else "http"
        print(f"serving on {scheme}://{config.host}:{port}/ ({config.app_env} mode)", flush=True)
        exit_code = await wait_for_stop(child)
        await shut_down(server, services)
        return exit_code
    finally:
        await services.close()
        if child is not None:
            code = child.stop()
            log.info("embedded store stopped", extra=fields(exit_code=code))


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the real-time server.")
    parser.add_argument("--host", help="address to listen on (HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (PORT, default 8888; 0 picks a free one)")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes sharing the port (needs REDIS_URL; see docs/scaling.md)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by the supervisor
    return parser


def fail(message: str, code: int) -> int:
    """Says why the server does not start, on one line of stderr; returns the exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    limit = configure()
    try:
        config = settings_module.load(os.environ, host=args.host, port=args.port)
        ceilings = plan_descriptors(config)
    except settings_module.SettingsError as exc:
        return fail(str(exc), 2)
    if args.processes != 1:
        return supervise(config, args.processes)
    try:
        return asyncio.run(serve(config, ceilings, reuse_port=args.worker))
    except SchemaFileError as exc:
        return fail(f"SCHEMAS_DIR: {exc}", 2)
    except RuntimeError as exc:
        return fail(str(exc), 1)
    finally:
        limit.flush(math.inf)  # say what the rate limit held back


if __name__ == "__main__":
    sys.exit(main())
