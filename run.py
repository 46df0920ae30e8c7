"""Starts the server: ``python run.py [--host H] [--port P]``.

Loads the settings, starts the embedded store as a child process when no
MONGO_URI is set, builds the application, listens (HTTPS/WSS with TLS_CERT and
TLS_KEY), and on SIGTERM or SIGINT stops accepting, lets in-flight requests
finish (bounded), closes the database client, stops the child store and exits 0.
If the child store dies, the server says so and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import settings as settings_module
from embedded_mongo.launcher import ChildStore
from handlers.app import make_app, max_body_size
from server.app import tune_gc
from server.logs import configure, fields
from server.records import SchemaFileError

log = logging.getLogger("run")
DRAIN_SECONDS = 10.0  # how long in-flight requests may take to finish at shutdown
EXIT_STORE_DIED = 3


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Mini Programs need TLS 1.2 or newer
    context.load_cert_chain(cert, key)
    return context


async def serve(config: settings_module.Settings) -> int:
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
        context = tls_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
        server = HTTPServer(app, ssl_options=context,
                            max_body_size=max_body_size(config), idle_connection_timeout=75)
        sockets = bind_sockets(config.port, config.host)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        scheme = "https" if config.tls else "http"
        print(f"serving on {scheme}://{config.host}:{port}/ ({config.app_env} mode)", flush=True)

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
        log.info("shutting down", extra=fields(in_flight=services.in_flight))
        server.stop()  # stop accepting
        await services.shutdown()  # close WebSockets with 1001 once what was acknowledged is stored
        if not await services.drain(DRAIN_SECONDS):
            log.warning("requests still in flight at shutdown", extra=fields(in_flight=services.in_flight))
        await asyncio.wait_for(server.close_all_connections(), DRAIN_SECONDS)
        return exit_code
    finally:
        await services.close()
        if child is not None:
            code = child.stop()
            log.info("embedded store stopped", extra=fields(exit_code=code))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the real-time server.")
    parser.add_argument("--host", help="address to listen on (HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (PORT, default 8888; 0 picks a free one)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes sharing the port")
    args = parser.parse_args(argv)
    configure()
    try:
        config = settings_module.load(os.environ, host=args.host, port=args.port)
    except settings_module.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.processes != 1:
        if not config.redis_url:
            print("error: --processes needs REDIS_URL: processes share fan-out through Redis", file=sys.stderr)
        else:
            print("error: --processes needs the Redis broker, which this version does not have yet",
                  file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(config))
    except SchemaFileError as exc:
        print(f"error: SCHEMAS_DIR: {exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
