"""Command line: ``python -m embedded_mongo --dbpath DIR --port P`` serves a store;
``python -m embedded_mongo copy --dbpath DIR --to MONGO_URI`` copies one to a
real MongoDB."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_mongo", description="Serve a MongoDB-compatible store.")
    parser.add_argument("--dbpath", required=True, help="directory of the data files")
    parser.add_argument("--port", type=int, default=27017, help="port to listen on; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--ttl-interval", type=float, default=60.0, help="seconds between TTL sweeps (default 60)")
    parser.add_argument("--enable-test-commands", action="store_true",
                        help="accept configureFailPoint (failCommand), as mongod's enableTestCommands does")
    parser.add_argument("--blocking-memory-limit", type=int, default=100 * 1024 * 1024, metavar="BYTES",
                        help="memory one blocking stage ($group, $sort without an index) may hold before it "
                             "spills to disk, or fails with allowDiskUse: false (default 100 MiB, as mongod)")
    parser.add_argument("--reader-threads", type=int, default=4,
                        help="reader threads kept (default 4); more start while long reads hold them all")
    parser.add_argument("--reader-threads-max", type=int, default=32,
                        help="reader threads at most, long reads or not (default 32)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.5,
                        help="how long a busy reader thread keeps the GIL from the event loop (default 0.5 ms)")
    args = parser.parse_args(argv)

    from .server import LockedError, Server

    try:
        server = Server(args.dbpath, args.host, args.port, args.ttl_interval, args.enable_test_commands,
                        max(args.blocking_memory_limit, 1), max(args.reader_threads, 1),
                        max(args.switch_interval_ms, 0.01) / 1000.0, max(args.reader_threads_max, 1))
    except LockedError as exc:
        print(f"embedded_mongo: {exc}", file=sys.stderr, flush=True)
        return 1

    async def main() -> None:
        port = await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"embedded_mongo {__version__} ready: mongodb://{args.host}:{port}/ dbpath={args.dbpath} port={port}",
              flush=True)
        await stop.wait()
        await server.stop()
        print("embedded_mongo stopped", flush=True)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"embedded_mongo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _copy(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_mongo copy",
                                     description="Copy every database, collection and index to a MongoDB.")
    parser.add_argument("--dbpath", required=True, help="directory of the embedded store (not running)")
    parser.add_argument("--to", required=True, metavar="MONGO_URI", help="the MongoDB to copy into")
    parser.add_argument("--drop", action="store_true", help="drop target collections that already hold documents")
    args = parser.parse_args(argv)
    from .copy import copy_store

    try:
        copy_store(args.dbpath, args.to, drop=args.drop, out=sys.stdout)
    except Exception as exc:  # report one clear line, not a traceback
        print(f"embedded_mongo copy: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s level=%(levelname)s %(message)s")
    if argv and argv[0] == "copy":
        return _copy(argv[1:])
    return _serve(argv)


if __name__ == "__main__":
    sys.exit(main())
