"""Command-line helpers shipped with perditionpy (``makegdbm``)."""
