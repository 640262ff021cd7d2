"""Knowlarity call-audio WebSockets <-> Apache Kafka gateway.

Layout: ``core`` (pure per-call logic and the Knowlarity codec), ``server``
(Autobahn adapter), ``bus`` (Kafka), ``node`` (wiring), ``records`` (protobuf),
``cli`` (entry point). See README.md.
"""
