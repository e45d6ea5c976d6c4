"""What both sides of the socket share and nothing else: the client library imports this, never the daemon."""
