"""Audio the example bots ship with (the WAVs; README.md says how they were made)."""
