"""The provider edge: Knowlarity's WebSockets in, through Autobahn, into the core.

``server`` holds the factory and protocol (handshake, limits before parsing,
frames into the call, effects out), ``paths`` which request paths are call
streams, ``registry`` the live calls by id. The adapter never imports the
node: it is handed a ``CallHost``.
"""
