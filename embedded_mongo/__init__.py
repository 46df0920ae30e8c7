"""A standalone document store that speaks the MongoDB wire protocol.

Run it with ``python -m embedded_mongo --dbpath DIR --port P``. It imports
nothing from the application: drivers and shells talk to it over a socket exactly
as they would to a standalone mongod.
"""

__version__ = "0.1.0"
