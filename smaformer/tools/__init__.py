"""Tools: model info (parameters per part, FLOPs), the architecture page, the demo, the dataset checker
and the Synapse-layout converter."""
