"""What a person reads: the study report (Jinja2 templates), its text form, overlays, the
real-radiograph figure."""
