"""Who is on which address, without a proxy password.

Identity sources (RADIUS accounting from the Wi-Fi controller, the portal's sign-in page,
Windows single sign-on with Negotiate) all feed one table of address -> person bindings
(:mod:`schoolgate.storage.bindings`), shared by every worker and gateway through the database
and cached in memory by each process (:mod:`schoolgate.bindings.cache`). DHCP lease files give
device names and tell when an address has moved to another device (:mod:`.dhcp`).
"""
