"""``serve --workers N``: N node processes behind one listening port, under one supervisor.

``policy.py`` (pure: when a dead worker is started again, and when it is given up
on), ``endpoints.py`` (a worker's own settings: node id, metrics port, the shared
SO_REUSEPORT socket) and ``supervisor.py`` (the processes and the signals). No
reactor and no Kafka here: each worker is a whole node, the supervisor only
starts, restarts and stops them.
"""
