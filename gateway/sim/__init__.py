"""Virtual parts for the demo, the tests and anyone trying homehub without hardware."""
