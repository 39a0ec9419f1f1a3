"""The access-request portal (see ``schoolgate.portal.app.create_app`` and docs/portal.md)."""
