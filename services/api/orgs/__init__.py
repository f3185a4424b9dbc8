"""Organisation administration: tenants (platform), principals, keys, grants, policies, sharing, audit."""
