"""``knowlarity-gateway audit``: one call rebuilt from the bus alone.

- ``reading``: the Kafka edge; fetches one call's inbound and outbound records from
  its partition, from its start time, or lists recent calls.
- ``timeline``: pure; the records placed on one clock (the mapping is documented
  there), speech, turns, marks, clears, lost audio and the summary.
- ``files``: pure; the timeline as a stereo WAV, a PNG and one HTML page (bytes).
- ``command``: the settings table ``AUDIT_SETTINGS``, ``add_arguments`` and ``run``.
"""
