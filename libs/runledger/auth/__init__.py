"""Identity and authorization: API keys, event signatures, roles (casbin), the policy snapshot.

Pure domain code: no database driver and no web framework. The Postgres side is
runledger.stores.postgres.directory; the API and the projector both authorize
against an `AuthSnapshot` that an `AuthWatcher` keeps current.
"""
