"""Node leases, so that every started call ends on the bus even if its node dies.

``rules`` decides (pure: who holds which calls, when a lease has expired,
who ends a lost node's calls); ``keeper`` is its Kafka side on the nodes topic.
"""
