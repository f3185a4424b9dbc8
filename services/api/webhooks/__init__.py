"""Alert routing: a tenant's webhooks, which receive its findings as signed JSON (tenant admins only)."""
