"""Safeguarding monitoring: what pupils search for and the titles of the pages they open,
graded against the school's risk-term library. Pure: nothing here knows of mitmproxy, the
database or the web.

* :mod:`.searches`: recognise a search in a request and decode its term.
* :mod:`.library`: the risk-term library files (``blocklists/safeguarding/<language>/``).
* :mod:`.terms`: the normaliser and the matcher built from a library.
* :mod:`.titles`: a page's ``<title>`` and ``og:title`` from the first bytes of a response.
"""
