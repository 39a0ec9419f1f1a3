"""The pure policy core: config reading, the policy and its decision, lists, platforms,
timetables, identity, hosts and the values passed between them. Nothing here imports
mitmproxy, SQLAlchemy or Flask."""
