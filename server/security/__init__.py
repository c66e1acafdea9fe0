"""Who may call a node and how much: bearer tokens and their roles, the gRPC
interceptor that checks them, in-flight request limits (``auth.py``), and TLS
material that is re-read when it changes (``tls.py``)."""
