"""Real smdebug, in a virtual environment of its own, reading what ``signwatch debugger export`` wrote."""
