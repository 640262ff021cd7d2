"""The sans-I/O core: the Knowlarity codec, the per-call state machine, playout.

Nothing in this package imports Twisted, Autobahn, aiokafka, sockets or
generated protobuf code; ``tests/test_core_purity.py`` enforces it.
"""
