"""The four services. Each is thin: a composition root that builds the core from the shared
library once, and the transport (HTTP routes or a consumer loop) that drives it."""
