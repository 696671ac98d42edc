"""Generated data for what real data cannot cover: skulls, SkullBreak-style defects and CTs."""
