"""The pure policy core: nothing here imports mitmproxy, SQLAlchemy or Flask."""
