"""signwatch: serve, capture, monitor and explain a traffic-sign classifier.

The library knows nothing of Kafka, Redis or S3: it talks to three ports (event bus, object
store, state store) whose adapters are picked by URL scheme in `signwatch.ports`.
"""

__version__ = "0.1.0"
