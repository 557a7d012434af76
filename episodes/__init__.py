"""episodes: few-shot data sources, episodic sampling and transforms (never imports metasparse)."""
