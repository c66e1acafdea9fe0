"""The web tier: an aiohttp server on the node's own event loop.

``tier.py`` serves the JSON API (``/v1/...``), health and the hosted
application's pages; ``status_page.py`` renders the status page;
``metrics.py`` the Prometheus ``/metrics``.
"""
