"""PostgreSQL: the metadata schema and its migration."""
