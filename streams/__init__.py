"""Stream processing: the one Faust app (``streams.app``), its agents, intake, topic administration.

The top layer: imports ``models``, ``features`` and ``fraudpipe``; nothing imports it back.
"""
