"""The web tier: an aiohttp server on the node's own event loop.

``tier.py`` serves the JSON API (``/v1/...``), health and the hosted
application's pages; ``status_page.py`` renders the status page;
``metrics.py`` the Prometheus ``/metrics``; ``sse.py`` Server-Sent Events
(the application's change events, bounded and resumable). They see the node
only through ``view.py`` (WebTierView) and the runtime's reports
(runtime/status.py), never the Node object.
"""
