"""The portal's blueprints, one module per area (the older ones are still
``schoolgate.portal.views_public`` and ``views_staff``)."""
