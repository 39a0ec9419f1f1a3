"""The pure policy core: settings, lists, platforms and decisions, with no mitmproxy, database
or web framework."""
