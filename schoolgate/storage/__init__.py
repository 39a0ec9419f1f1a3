"""Storage: the database models, their queries and the writers that keep them. It imports the
core and nothing above it."""
