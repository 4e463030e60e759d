"""The unidist-api benchmark suite: ``python -m benchmarks`` (see docs/performance.md).

Each module measures one thing: :mod:`.submit` (submit+result per task),
:mod:`.map_tiny` (map over tiny items), :mod:`.cpu_bound` (CPU efficiency),
:mod:`.pipeline_bound` (a pipeline against its bound), :mod:`.unidist_peer` (modin's
unidist as a peer), :mod:`.memory` (driver memory of a streamed map). They share the
engines of :mod:`.engines`, the alternating rounds of :mod:`.measure`, and
:mod:`.report` prints the tables and writes the JSON file.
"""
