"""The PostgreSQL storage backend (psycopg 3 with psycopg_pool): `[store] url = "postgresql://..."`."""

from node.store.postgres.storage import PgStorage

__all__ = ["PgStorage"]
