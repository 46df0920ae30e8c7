"""The tests' embedded store processes: the same launcher run.py uses."""

from __future__ import annotations

import os

from embedded_mongo.launcher import ChildStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
StoreProcess = ChildStore
