"""PostgreSQL store: migrations, the exactly-once writer and the reader."""
