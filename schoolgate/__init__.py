"""schoolgate: a web gateway for schools, built as mitmproxy addons."""

__version__ = "0.1.0"
