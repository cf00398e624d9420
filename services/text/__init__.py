"""Text analysis shared by the prompt components: prompt features, quality scoring and rewrite rules."""
