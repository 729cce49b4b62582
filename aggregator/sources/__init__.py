"""Managing the sources: finding feeds (:mod:`.discover`), editing feeds.yaml as a round
trip (:mod:`.feedsfile`: ``add``, ``remove``) and OPML (:mod:`.opml`: ``import-opml``,
``export-opml``)."""
