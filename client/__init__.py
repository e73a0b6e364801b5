"""Client side: inference backends, bulk runners, reports, the local server lifecycle."""
