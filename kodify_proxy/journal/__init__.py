"""The request journal (LOGS=True): one row per API request in PostgreSQL or SQLite, written off the hot path."""
