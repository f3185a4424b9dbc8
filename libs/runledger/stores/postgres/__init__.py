"""PostgreSQL: the metadata schema, its migration, and the connection type adapters use."""

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What adapters accept: a plain connection or one borrowed from a pool.
PgConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
