"""Monitor service: rolling class counts in the state store; violations on the bus."""
