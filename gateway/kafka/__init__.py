"""The Kafka edge of a node: records out, commands in.

``bus`` holds the per-partition producer path and the command consumer,
``outbox`` the bounded buffer of records not yet acknowledged (pure), and
``clients`` the bounded stop of aiokafka clients.
"""
