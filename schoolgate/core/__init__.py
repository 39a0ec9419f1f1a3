"""schoolgate's pure policy core: nothing here imports mitmproxy, SQLAlchemy or Flask."""
