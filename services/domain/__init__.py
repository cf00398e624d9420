"""The domain data of the prompt-improvement system: prompts, rules, sessions, rule applications, feedback.

    from services.domain import open_store, store_for

    store = open_store(settings)     # PostgreSQL when MLMESH_DATABASE_URL is set, else data/domain.sqlite
    store.applications(since=t0)     # plain dicts, JSON decoded, joined with the prompt's domain and text

See :mod:`services.domain.store` for the tables and the write/read rules.
"""

from services.domain.store import SCHEMA_VERSION, TABLES, DomainStore, SchemaTooNew, open_store, store_for

__all__ = ["SCHEMA_VERSION", "TABLES", "DomainStore", "SchemaTooNew", "open_store", "store_for"]
