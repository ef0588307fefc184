"""Beyond one process: the ingest publishes the aggregator's inputs to a Redis stream, edges replay them.

- ``stream``: the pure part: inputs as stream entries, offsets, the aggregator's state as bytes.
- ``redis_io``: the trio tasks that move them through Redis (the ingest's publisher and snapshot
  writer, the edge's follower).
- ``workers``: ``flowboard serve --workers N``, one ingest and N edges on one machine, supervised.
"""
