"""Workflow the portal's views call, apart from Flask."""
