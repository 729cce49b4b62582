"""Poll RSS/Atom/JSON feeds, archive every new item as a post, republish a merged feed."""

__version__ = "0.1.0"
